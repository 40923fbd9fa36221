"""Training data: fixed-length blocks of token ids from text8, OpenWebText, the shipped corpus or local files.

Two tracks, chosen by the tokenizer:

- **characters** (``tokenizer="char"``, V = 27): the split's character stream is cut into non-overlapping blocks,
  256 characters by default (text8 as in D3PM / MDLM; no BOS/EOS, so BPC is the loss per raw character).
- **documents** (any other tokenizer, e.g. GPT-2 BPE): every document is tokenised without special tokens and
  followed by one EOS, the split is concatenated and cut into blocks of 1,024 tokens by default (OpenWebText as in
  MDLM's ``wrap``, without its extra BOS per block).

In both the last partial block of a split is dropped, and every item is ``{"input_ids": LongTensor(block_size)}``.

Sources, for either track: the shipped corpus by name (``"tiny-literary"``, in ``data/`` of the repository), a Hub
dataset (``"text8"``, ``"openwebtext"``, or any ``"owner/name"`` with a ``text`` column and its own splits), or a local
path: a folder holding one file per split named ``train`` / ``valid`` or ``validation`` / ``test``, or a single file
that is split 90/5/5 in order (characters for text8, documents for the document track). Character files are
``.txt`` / ``.txt.gz`` (or ``text8.zip``); document files are ``.jsonl`` / ``.jsonl.gz`` (field ``text``) or
``.txt`` / ``.txt.gz`` (one document per non-empty line). A local path of the same name wins over a Hub id.

Caching: Hub downloads, parsed files and tokenised documents live in the `datasets` cache (``HF_DATASETS_CACHE``, or
``DataConfig.cache_dir``), never in the repository; the character track needs no cache (encoding 100M characters
takes about a second).
"""

import gzip
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .errors import AssetUnavailableError, DataError, MissingDataError, SettingsError
from .tokenization_char import TEXT8_ALPHABET, build_char_tokenizer, encode_text8, text8_normalize

SHIPPED_CORPUS = "tiny-literary"
SHIPPED_CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / SHIPPED_CORPUS
TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
OPENWEBTEXT_HUB_ID = "Skylion007/openwebtext"  # what the legacy id "openwebtext" redirects to
OPENWEBTEXT_VALIDATION_DOCUMENTS = 100_000  # MDLM: validation = the last 100k documents of OWT's only split
CHARACTER_TOKENIZER = "char"
SPLITS = ("train", "validation", "test")

_SPLIT_FILE_STEMS = {"train": ("train",), "validation": ("valid", "validation", "val"), "test": ("test",)}
_SPLIT_FRACTIONS = {"train": (0.0, 0.90), "validation": (0.90, 0.95), "test": (0.95, 1.0)}  # text8's 90M/5M/5M
_CHARACTER_SUFFIXES = (".txt", ".txt.gz")
_DOCUMENT_SUFFIXES = (".jsonl", ".jsonl.gz", ".txt", ".txt.gz")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_DATA_FILE_ENDINGS = (".txt", ".gz", ".json", ".jsonl", ".zip")


@dataclass
class DataConfig:
    """What to train on; the fields double as command-line flags (`transformers.HfArgumentParser`)."""

    dataset: str = field(default=SHIPPED_CORPUS, metadata={
        "help": "'tiny-literary' (shipped), 'text8', 'openwebtext', a Hub dataset id, or a local file or folder"})
    tokenizer: str = field(default=CHARACTER_TOKENIZER, metadata={
        "help": "'char' for the 27-symbol text8 alphabet, else a tokenizer id or folder (e.g. 'gpt2')"})
    block_size: int | None = field(default=None, metadata={
        "help": "tokens per training block; default 256 for characters, 1024 for documents"})
    max_train_blocks: int | None = field(default=None, metadata={
        "help": "keep at most this many train blocks, evenly spaced over the split"})
    max_eval_blocks: int | None = field(default=None, metadata={
        "help": "keep at most this many validation / test blocks, evenly spaced over the split"})
    normalize_text8: bool = field(default=False, metadata={
        "help": "characters: text8-normalise the text instead of rejecting characters outside a-z and space"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "datasets cache folder (default: HF_DATASETS_CACHE)"})
    num_proc: int | None = field(default=None, metadata={"help": "processes for tokenising documents"})

    def __post_init__(self):
        if self.block_size is None:
            self.block_size = 256 if self.uses_characters else 1024
        for name in ("block_size", "max_train_blocks", "max_eval_blocks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"DataConfig.{name} must be a positive integer or None, got {value}")
        if self.dataset == "text8" and not self.uses_characters:
            raise SettingsError(f"DataConfig.tokenizer: text8 is a character corpus, use 'char', not {self.tokenizer!r}")
        if self.dataset in ("openwebtext", OPENWEBTEXT_HUB_ID) and self.uses_characters:
            raise SettingsError("DataConfig.tokenizer: openwebtext needs a document tokenizer such as 'gpt2', not 'char'")

    @property
    def uses_characters(self) -> bool:
        return self.tokenizer == CHARACTER_TOKENIZER


class TokenBlocks(torch.utils.data.Dataset):
    """Non-overlapping blocks of `block_size` ids cut from one token stream; the last partial block is dropped.

    Item ``i`` is ``{"input_ids": stream[i * block_size : (i + 1) * block_size]}`` as a ``torch.long`` tensor.
    `tokens` is the stream as a 1-D integer array, or a `datasets.Dataset` whose ``input_ids`` rows (one per
    document) concatenate to it. A dataset is read in place from its Arrow table (memory-mapped when it lives in the
    cache), so OpenWebText's ~9B tokens take no RAM, and a pickled copy (DataLoader workers) carries file references.
    """

    def __init__(self, tokens, block_size: int):
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.tokens = tokens
        self.block_size = block_size
        self._stream = _flat_token_stream(tokens)

    def __len__(self) -> int:
        return self.num_tokens // self.block_size

    @property
    def num_tokens(self) -> int:
        return len(self._stream)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = index + len(self) if index < 0 else index
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} out of range for {len(self)} blocks")
        window = self._stream.slice(index * self.block_size, self.block_size).to_numpy()
        return {"input_ids": torch.from_numpy(window.astype(np.int64))}

    def __getstate__(self):
        return {"tokens": self.tokens, "block_size": self.block_size}

    def __setstate__(self, state):
        self.__init__(**state)


def _flat_token_stream(tokens) -> pa.ChunkedArray:
    """All token ids in order, as zero-copy views of the per-document rows (or of the array)."""
    if isinstance(tokens, datasets.Dataset):
        if tokens._indices is not None:  # after select/shuffle the table is not in dataset order
            tokens = tokens.flatten_indices()
        column = tokens.data.table.column("input_ids")
        return pa.chunked_array([chunk.flatten() for chunk in column.chunks], type=column.type.value_type)
    return pa.chunked_array([pa.array(np.asarray(tokens).reshape(-1))])


def canonical_split(split: str) -> str:
    """``"train"``, ``"validation"`` (also spelled ``"valid"`` / ``"val"``) or ``"test"``."""
    for name, spellings in _SPLIT_FILE_STEMS.items():
        if split == name or split in spellings:
            return name
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} (or 'valid')")


def load_text8(source: str = "text8", split: str = "train", *, normalize: bool = False,
               cache_dir: str | None = None) -> str:
    """The character stream of one split of a text8-style corpus (27 symbols: a-z and space).

    ``"text8"`` downloads Matt Mahoney's ``text8.zip`` (100M characters) and takes the standard split of D3PM / MDLM:
    train = ``[:90M]``, validation = ``[90M:95M]``, test = ``[95M:]``; a local single file is split at the same 90/5/5
    fractions. Other Hub ids are read with `datasets.load_dataset` (their ``text`` rows of the split, joined by one
    space). Trailing newlines of a file are dropped. With ``normalize=True`` the text is passed through
    `text8_normalize` (a whole file before it is split); otherwise characters outside the alphabet raise ValueError
    when the stream is encoded (`encode_text8`).
    """
    split = canonical_split(split)
    path = _local_path(source)
    if path is None and source != "text8":  # a Hub dataset with its own splits
        text = " ".join(datasets.load_dataset(source, split=split, cache_dir=cache_dir)["text"])
    elif path is not None and path.is_dir():
        text = _read_text(_split_file(path, split, _CHARACTER_SUFFIXES))
    else:  # one file holding the whole corpus: a local file, or text8.zip
        text = _read_text(path or _download(TEXT8_URL, cache_dir))
        text = text8_normalize(text) if normalize else text
        return text[slice(*_split_bounds(len(text), split))]
    return text8_normalize(text) if normalize else text


def load_openwebtext(source: str = "openwebtext", split: str = "train", *,
                     cache_dir: str | None = None) -> datasets.Dataset:
    """The documents (column ``text``) of one split of an OpenWebText-style corpus.

    ``"openwebtext"`` loads the Hub dataset with MDLM's split of its single ``train`` split: train =
    ``train[:-100000]``, validation = ``train[-100000:]``; it has no test split (ValueError). Other Hub ids use their
    own splits. A local single file keeps its documents in order and is split 90/5/5 by document count.
    """
    split = canonical_split(split)
    path = _local_path(source)
    if path is None:
        return _load_hub_documents(source, split, cache_dir)
    if path.is_dir():
        return _load_document_file(_split_file(path, split, _DOCUMENT_SUFFIXES), cache_dir)
    documents = _load_document_file(path, cache_dir)
    return documents.select(range(*_split_bounds(len(documents), split)))


def tokenize_documents(documents: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, *,
                       eos_token_id: int | None = None, num_proc: int | None = None) -> datasets.Dataset:
    """One row per document, column ``input_ids``: its ids (no special tokens) followed by one EOS.

    `eos_token_id` defaults to ``tokenizer.eos_token_id`` (50256 for GPT-2). Cached by `datasets` when `documents`
    comes from files.
    """
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos_token; pass eos_token_id to pack documents")

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [document + [eos] for document in ids]}

    return documents.map(tokenize, batched=True, remove_columns=documents.column_names, num_proc=num_proc,
                         desc="Tokenising documents")


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """``"char"``: the 27-symbol character tokenizer; anything else: `AutoTokenizer` (Hub id or local folder)."""
    if name == CHARACTER_TOKENIZER:
        return build_char_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise AssetUnavailableError(
            f"could not load the tokenizer {name!r} ({_first_line(error)}); offline, pass a local tokenizer folder "
            "with --tokenizer (one written by save_pretrained, e.g. shared/data/gpt2-tokenizer)") from error


def build_datasets(config: DataConfig) -> tuple[dict[str, torch.utils.data.Dataset], PreTrainedTokenizerBase]:
    """The splits as map-style datasets of ``{"input_ids": LongTensor(config.block_size)}``, and the tokenizer.

    Keys are ``"train"``, ``"validation"`` and, where the source has one, ``"test"`` (OpenWebText and local folders
    without a test file have none). `max_train_blocks` / `max_eval_blocks` keep evenly spaced blocks, so a small
    subset still covers the whole split.
    """
    tokenizer = load_tokenizer(config.tokenizer)
    tokenizer.model_max_length = config.block_size  # the context the model is trained for, saved with it
    splits = {}
    for split in _available_splits(config):
        blocks = _build_split(config, split, tokenizer)
        if len(blocks) == 0 and split != "test":  # only evaluation reads the test split
            raise DataError(f"the {split} split of {config.dataset!r} holds {blocks.num_tokens} tokens, fewer than "
                            f"one block of {config.block_size}; lower --block_size or use more data")
        limit = config.max_train_blocks if split == "train" else config.max_eval_blocks
        splits[split] = _evenly_spaced_subset(blocks, limit)
    return splits, tokenizer


def _build_split(config: DataConfig, split: str, tokenizer: PreTrainedTokenizerBase) -> TokenBlocks:
    if config.uses_characters:
        text = load_text8(config.dataset, split, normalize=config.normalize_text8, cache_dir=config.cache_dir)
        ids = encode_characters(text, config.dataset, split, "pass --normalize_text8 to lowercase it and turn every "
                                "other run of characters (newlines, digits, punctuation) into one space")
        return TokenBlocks(ids, config.block_size)
    documents = load_openwebtext(config.dataset, split, cache_dir=config.cache_dir)
    return TokenBlocks(tokenize_documents(documents, tokenizer, num_proc=config.num_proc), config.block_size)


def encode_characters(text: str, source: str, split: str, remedy: str):
    """`encode_text8` of one split of `source`, refusing text outside the alphabet as a `DataError` that names the
    file it came from and `remedy` (a flag of the command that read it)."""
    try:
        return encode_text8(text)
    except ValueError:
        outside = sorted(set(text) - set(TEXT8_ALPHABET))
        path = _local_path(source) if source != "text8" else None
        where = _split_file(path, split, _CHARACTER_SUFFIXES) if path is not None and path.is_dir() else path
        raise DataError(f"{where or source} (the {split} split of {source!r}) holds {len(outside)} kinds of "
                        f"characters outside the text8 alphabet (a-z and space), e.g. "
                        f"{', '.join(map(repr, outside[:10]))}; {remedy}") from None


def _available_splits(config: DataConfig) -> tuple[str, ...]:
    if config.dataset in ("openwebtext", OPENWEBTEXT_HUB_ID):
        return ("train", "validation")
    path = _local_path(config.dataset)
    if path is not None and path.is_dir():
        suffixes = _CHARACTER_SUFFIXES if config.uses_characters else _DOCUMENT_SUFFIXES
        if not _split_file_candidates(path, "test", suffixes):
            return ("train", "validation")
    return SPLITS


def evenly_spaced(count: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(count)`` (all of them without a limit), so that a subset of
    blocks (``max_train_blocks``, ``max_eval_blocks``, evaluation's ``--max_blocks``) still covers the whole split."""
    if limit is None or limit >= count:
        return list(range(count))
    return [i * count // limit for i in range(limit)]


def _evenly_spaced_subset(dataset: torch.utils.data.Dataset, max_items: int | None) -> torch.utils.data.Dataset:
    if max_items is None or max_items >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, evenly_spaced(len(dataset), max_items))


def _local_path(source: str) -> Path | None:
    """The local file or folder that `source` names (the shipped corpus by name), or None for a Hub id."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source == SHIPPED_CORPUS:
        if not SHIPPED_CORPUS_DIR.is_dir():
            raise MissingDataError(
                f"the shipped corpus is not at {SHIPPED_CORPUS_DIR}: it lives in data/{SHIPPED_CORPUS} of the "
                "repository checkout and is not part of an installed wheel; pass the folder's path instead")
        return SHIPPED_CORPUS_DIR
    if _HUB_ID.fullmatch(source) and not source.endswith(_DATA_FILE_ENDINGS):
        return None
    raise MissingDataError(f"dataset {source!r} is neither an existing file or folder nor a Hub id like 'owner/name'")


def _split_file_candidates(folder: Path, split: str, suffixes: tuple[str, ...]) -> list[Path]:
    names = [f"{stem}{suffix}" for stem in _SPLIT_FILE_STEMS[split] for suffix in suffixes]
    return [folder / name for name in names if (folder / name).is_file()]


def _split_file(folder: Path, split: str, suffixes: tuple[str, ...]) -> Path:
    candidates = _split_file_candidates(folder, split, suffixes)
    if not candidates:
        looked_for = ", ".join(f"{stem}{suffix}" for stem in _SPLIT_FILE_STEMS[split] for suffix in suffixes)
        raise MissingDataError(f"no {split} file in {folder}: looked for {looked_for}")
    return candidates[0]


def _split_bounds(length: int, split: str) -> tuple[int, int]:
    """[start, end) of `split` in a sequence of `length` items cut 90/5/5 in order."""
    start, end = _SPLIT_FRACTIONS[split]
    return round(start * length), round(end * length)


def _read_text(path: Path) -> str:
    """A text file as UTF-8, also gzipped or as the only member of a zip (``text8.zip``; judged by content, since
    the download cache drops file names), without trailing newlines."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [name for name in archive.namelist() if not name.endswith("/")]
                if len(members) != 1:
                    raise DataError(f"{path} holds {len(members)} files; expected a single text file like text8.zip")
                return archive.read(members[0]).decode("utf-8").rstrip("\n")
        with open(path, "rb") as f:
            is_gzip = f.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rt", encoding="utf-8") if is_gzip else open(path, encoding="utf-8")) as f:
            return f.read().rstrip("\n")  # a text8 file written with print() ends in a newline that is not data
    except UnicodeDecodeError as error:
        raise _not_utf8(path, _decode_error_detail(error)) from error


def _decode_error_detail(error: UnicodeDecodeError) -> str:
    return f"{error.reason}, byte {error.object[error.start:error.start + 1]!r} at offset {error.start}"


def _not_utf8(path: Path, detail: str) -> DataError:
    return DataError(f"{path}: not UTF-8 text ({detail}); convert it first, e.g. `iconv -f latin1 -t utf-8`")


def _download(url: str, cache_dir: str | None) -> Path:
    """A file from the web, through the `datasets` download cache; offline, an error naming the local way."""
    download_config = datasets.DownloadConfig(cache_dir=cache_dir)
    try:
        return Path(datasets.DownloadManager(download_config=download_config).download(url))
    except (ConnectionError, OSError) as error:
        raise AssetUnavailableError(
            f"could not download {url} ({_first_line(error)}); offline, pass a local copy with --dataset: the "
            "text8.zip file, or a folder of train / valid / test .txt(.gz) files such as "
            "shared/data/literary-text8") from error


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _load_hub_documents(source: str, split: str, cache_dir: str | None) -> datasets.Dataset:
    try:
        return _load_hub_split(source, split, cache_dir)
    except ConnectionError as error:
        raise AssetUnavailableError(
            f"could not load the dataset {source!r} from the Hub ({_first_line(error)}); offline, pass a local "
            "copy with --dataset: a folder of train / valid / test .jsonl(.gz) or .txt(.gz) files such as "
            "shared/data/literary-docs") from error


def _load_hub_split(source: str, split: str, cache_dir: str | None) -> datasets.Dataset:
    if source not in ("openwebtext", OPENWEBTEXT_HUB_ID):
        return datasets.load_dataset(source, split=split, cache_dir=cache_dir)
    if split == "test":
        raise ValueError("openwebtext has no test split; MDLM evaluates on its validation split (last 100k documents)")
    n = OPENWEBTEXT_VALIDATION_DOCUMENTS
    hub_split = f"train[:-{n}]" if split == "train" else f"train[-{n}:]"
    return datasets.load_dataset(OPENWEBTEXT_HUB_ID, split=hub_split, cache_dir=cache_dir)


def _load_document_file(path: Path, cache_dir: str | None) -> datasets.Dataset:
    """Documents of a ``.jsonl(.gz)`` file (field ``text``) or a ``.txt(.gz)`` file (one per non-empty line)."""
    if not path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", *_CHARACTER_SUFFIXES)):
        raise DataError(f"{path}: expected .jsonl(.gz) documents with a 'text' field or .txt(.gz), one per line")
    builder = "text" if path.name.endswith(_CHARACTER_SUFFIXES) else "json"
    try:
        documents = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
    except (UnicodeDecodeError, datasets.exceptions.DatasetGenerationError) as error:
        cause = error if isinstance(error, UnicodeDecodeError) else error.__cause__
        if isinstance(cause, UnicodeDecodeError):
            raise _not_utf8(path, _decode_error_detail(cause)) from error
        raise
    if "text" not in documents.column_names:
        raise DataError(f"{path}: documents need a 'text' field; found {documents.column_names}")
    try:  # Arrow's JSON reader keeps invalid UTF-8 as it is, to fail later at tokenisation without the file name
        documents.data.table.column("text").validate(full=True)
    except pa.ArrowInvalid as error:
        raise _not_utf8(path, str(error)) from error
    if builder == "text":
        documents = documents.filter(lambda row: bool(row["text"].strip()), desc="Dropping empty lines")
    return documents
