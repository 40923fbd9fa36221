"""The data layer: the 27-symbol tokenizer, text8 chunking, document packing, local sources, the shipped corpus.

Offline: only the shipped corpus and files written to tmp_path (conftest.py turns the Hub off)."""

import gzip
import hashlib
import json
import pickle
import re

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from evaluation.entropy import unigram_entropy
from training.data import (
    SHIPPED_CORPUS_DIR,
    DataConfig,
    TokenBlocks,
    build_datasets,
    load_openwebtext,
    load_text8,
    tokenize_documents,
)
from training.errors import AssetUnavailableError, DataError
from training.tokenization_char import (
    TEXT8_ALPHABET,
    build_char_tokenizer,
    decode_text8,
    encode_text8,
    text8_normalize,
)

SPLIT_FILES = {"train": "train", "validation": "valid", "test": "test"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets-cache"))


@pytest.fixture(scope="module")
def valid_text8():
    return load_text8("tiny-literary", "validation")


def read_shipped_documents(split: str) -> list[dict]:
    with gzip.open(SHIPPED_CORPUS_DIR / f"{SPLIT_FILES[split]}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def save_word_tokenizer(documents: list[str], folder) -> str:
    """A tiny word-level tokenizer with an EOS, standing in for GPT-2 on the document track."""
    words = sorted({word for document in documents for word in document.split()})
    vocab = {"<eos>": 0, **{word: i + 1 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(folder)
    return str(folder)


# --- the character tokenizer ---------------------------------------------------------------------------------------

def test_char_tokenizer_has_exactly_the_27_text8_symbols_and_no_special_tokens():
    tokenizer = build_char_tokenizer()
    assert len(tokenizer) == tokenizer.vocab_size == 27
    assert tokenizer.get_vocab() == {symbol: i for i, symbol in enumerate(TEXT8_ALPHABET)}
    assert tokenizer.all_special_ids == [] and tokenizer.eos_token is None and tokenizer.pad_token is None


def test_char_tokenizer_round_trip_is_lossless_and_agrees_with_the_fast_encoder(valid_text8):
    tokenizer = build_char_tokenizer()
    for text in (valid_text8[:5000], " two  spaces at  the ends  ", "z"):
        ids = tokenizer(text)["input_ids"]
        assert ids == encode_text8(text).tolist()
        assert tokenizer.decode(ids) == text == decode_text8(ids)


def test_char_tokenizer_reloads_offline_with_auto_tokenizer(tmp_path, valid_text8):
    build_char_tokenizer().save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = valid_text8[:2000]
    assert len(reloaded) == 27
    assert reloaded(text)["input_ids"] == encode_text8(text).tolist()
    assert reloaded.decode(reloaded(text)["input_ids"]) == text
    assert reloaded.decode(reloaded("Don't PANIC!")["input_ids"]) == "don t panic "  # normaliser survives the reload


def test_text_outside_the_alphabet_is_rejected_by_the_stream_encoder_and_normalised_on_request(tmp_path):
    with pytest.raises(ValueError, match=r"outside the text8 alphabet.*'!'"):
        encode_text8("hello world!")
    raw = tmp_path / "raw.txt"
    raw.write_text("In the Beginning, God created\nthe Heaven & the Earth. " * 40)
    with pytest.raises(ValueError, match="normalise"):
        encode_text8(load_text8(str(raw), "train"))
    assert load_text8(str(raw), "train", normalize=True).startswith("in the beginning god created the heaven the")


# --- text8: sources and chunking -----------------------------------------------------------------------------------

def test_local_text8_folder_reads_one_file_per_split(tmp_path):
    (tmp_path / "train.txt").write_text("the train split\n")  # a trailing newline is not data
    with gzip.open(tmp_path / "valid.txt.gz", "wt") as f:
        f.write("the valid split")
    (tmp_path / "test.txt").write_text("the test split")
    assert [load_text8(str(tmp_path), split) for split in ("train", "valid", "test")] == [
        "the train split", "the valid split", "the test split"]


def test_local_text8_single_file_is_split_90_5_5_in_order(tmp_path):
    stream = "abcdefghij " * 100
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(gzip.compress(stream.encode()))
    splits = [load_text8(str(path), split) for split in ("train", "validation", "test")]
    assert [len(s) for s in splits] == [990, 55, 55]
    assert "".join(splits) == stream


def test_bad_sources_and_splits_raise_errors_that_name_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="no test file"):
        load_text8(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text8(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_text8("tiny-literary", "dev")
    with pytest.raises(ValueError, match="no test split"):
        load_openwebtext("openwebtext", "test")
    with pytest.raises(ValueError, match="block_size"):
        DataConfig(block_size=0)


@pytest.mark.parametrize("train_text", ["", "too short for a block"])
def test_training_data_shorter_than_one_block_is_a_clear_error(tmp_path, train_text):
    for name, text in (("train", train_text), ("valid", "a" * 100)):
        (tmp_path / f"{name}.txt").write_text(text)
    with pytest.raises(DataError, match=f"the train split of .* holds {len(train_text)} tokens, fewer than one "
                                        "block of 64; lower --block_size"):
        build_datasets(DataConfig(dataset=str(tmp_path), block_size=64))


@pytest.mark.parametrize("name", ["train.txt", "train.txt.gz", "train.jsonl"])
def test_a_data_file_that_is_not_utf8_is_an_error_naming_it(tmp_path, cache_dir, name):
    latin1 = "caf\xe9 au lait ".encode("latin-1") * 20
    payload = b'{"text": "' + latin1 + b'"}\n' if name.endswith(".jsonl") else latin1
    (tmp_path / name).write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    (tmp_path / "valid.txt").write_text("a" * 100)
    tokenizer = "char" if ".txt" in name else save_word_tokenizer(["a"], tmp_path / "tokenizer")
    with pytest.raises(DataError, match=f"{name}: not UTF-8 text"):
        build_datasets(DataConfig(dataset=str(tmp_path), tokenizer=tokenizer, block_size=8, cache_dir=cache_dir))


def test_offline_hub_sources_name_the_local_flag_to_pass():
    with pytest.raises(AssetUnavailableError, match="text8.zip.*offline, pass a local copy with --dataset"):
        load_text8("text8", "train")
    with pytest.raises(AssetUnavailableError, match="'openwebtext' from the Hub.*--dataset"):
        load_openwebtext("openwebtext", "validation")
    with pytest.raises(AssetUnavailableError, match="tokenizer 'gpt2'.*--tokenizer"):
        build_datasets(DataConfig(dataset=str(SHIPPED_CORPUS_DIR), tokenizer="gpt2"))


def test_the_tokenizer_knows_the_block_size_as_its_context():
    _, tokenizer = build_datasets(DataConfig(block_size=32, max_train_blocks=2, max_eval_blocks=2))
    assert tokenizer.model_max_length == 32
    assert len(tokenizer(["x" * 100], truncation=True)["input_ids"][0]) == 32


# --- documents: sources and packing --------------------------------------------------------------------------------

def test_local_document_sources_jsonl_folder_single_file_and_txt(tmp_path, cache_dir):
    documents = [{"text": f"document {i}", "source": "test"} for i in range(40)]
    lines = "".join(json.dumps(d) + "\n" for d in documents)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, part in (("train", documents[:30]), ("valid", documents[30:35]), ("test", documents[35:])):
        (folder / f"{name}.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(d) + "\n" for d in part).encode()))
    assert list(load_openwebtext(str(folder), "validation", cache_dir=cache_dir)["text"]) == [
        f"document {i}" for i in range(30, 35)]
    (tmp_path / "all.jsonl").write_text(lines)
    split_texts = [list(load_openwebtext(str(tmp_path / "all.jsonl"), s, cache_dir=cache_dir)["text"])
                   for s in ("train", "validation", "test")]
    assert [len(t) for t in split_texts] == [36, 2, 2] and sum(split_texts, []) == [d["text"] for d in documents]
    (tmp_path / "lines.txt").write_text("".join(f"line {i}\n\n" for i in range(20)))  # empty lines are no documents
    test_lines = load_openwebtext(str(tmp_path / "lines.txt"), "test", cache_dir=cache_dir)
    assert list(test_lines["text"]) == ["line 19"]


def test_packing_puts_exactly_one_eos_after_each_document_in_fixed_length_blocks(tmp_path, cache_dir):
    texts = [" ".join(f"w{j}" for j in range(i % 7 + 1)) for i in range(60)]
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer_dir = save_word_tokenizer(texts, tmp_path / "tokenizer")
    splits, tokenizer = build_datasets(DataConfig(str(tmp_path), tokenizer_dir, block_size=8, cache_dir=cache_dir))
    eos = tokenizer.eos_token_id
    expected = sum((tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts), [])
    blocks = splits["train"]
    assert len(blocks) == len(expected) // 8 and all(blocks[i]["input_ids"].shape == (8,) for i in range(len(blocks)))
    packed = torch.cat([blocks[i]["input_ids"] for i in range(len(blocks))]).tolist()
    assert packed == expected[: len(packed)]
    assert packed.count(eos) == sum(1 for i, t in enumerate(expected[: len(packed)]) if t == eos)
    assert expected.count(eos) == len(texts)


def test_token_blocks_pickle_for_dataloader_workers(cache_dir):
    documents = load_openwebtext("tiny-literary", "test", cache_dir=cache_dir)
    blocks = TokenBlocks(tokenize_documents(documents, build_char_tokenizer(), eos_token_id=26), 64)
    copy = pickle.loads(pickle.dumps(blocks))
    last = len(blocks) - 1
    assert len(copy) == len(blocks) and torch.equal(copy[last]["input_ids"], blocks[last]["input_ids"])


# --- build_datasets and the shipped corpus -------------------------------------------------------------------------

def test_build_datasets_default_is_the_shipped_corpus_in_256_character_blocks():
    splits, tokenizer = build_datasets(DataConfig(max_train_blocks=10))
    assert set(splits) == {"train", "validation", "test"} and len(tokenizer) == 27
    assert len(splits["train"]) == 10 and len(splits["validation"]) == len(load_text8("tiny-literary", "valid")) // 256
    first = splits["train"][0]["input_ids"]
    assert first.shape == (256,) and first.dtype == torch.long
    assert decode_text8(first) == load_text8("tiny-literary", "train")[:256]


def test_shipped_corpus_splits_are_disjoint_whole_documents_with_a_text8_twin():
    documents = {split: read_shipped_documents(split) for split in SPLIT_FILES}
    for split, docs in documents.items():
        assert {d["source"] for d in docs} == {"kjv", "shakespeare", "jargon"}  # no fortunes
        assert load_text8("tiny-literary", split) == " ".join(text8_normalize(d["text"]) for d in docs)
    titles = {split: {d["title"] for d in docs} for split, docs in documents.items()}
    texts = {split: {d["text"] for d in docs} for split, docs in documents.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not titles[a] & titles[b] and not texts[a] & texts[b]


def test_shipped_corpus_md5s_match_its_readme():
    readme = (SHIPPED_CORPUS_DIR.parent / "README.md").read_text()
    recorded = dict(re.findall(r"\| `tiny-literary/([\w.]+)` \| [\d,]+ \| `([0-9a-f]{32})` \|", readme))
    assert len(recorded) == 6
    for name, md5 in recorded.items():
        assert hashlib.md5((SHIPPED_CORPUS_DIR / name).read_bytes()).hexdigest() == md5, name


def test_unigram_entropy_of_the_shipped_train_split_is_the_recorded_floor():
    assert unigram_entropy([0, 1, 2, 3], base=2) == pytest.approx(2.0)
    entropy = unigram_entropy(encode_text8(load_text8("tiny-literary", "train")), base=2)
    assert entropy == pytest.approx(4.0700, abs=1e-4)
