"""The 27-symbol character alphabet of text8, as a `transformers` tokenizer and as a fast array encoder.

Ids: ``a``..``z`` are 0..25 and space is 26 (the character order of MDLM's ``Text8Tokenizer``, without its 8 special
tokens). TarFlowLM models text8 with V = 27, so the tokenizer has no special tokens at all: no BOS, EOS, PAD or UNK.
text8 has no document boundaries for a BOS or EOS to mark. A PAD would have to be either a 28th id, which the
model has no embedding for, or one of the 27 characters, which `transformers` then treats as special and drops from
every ``decode(..., skip_special_tokens=True)`` (the text-generation pipeline's default): a space as PAD would
delete every space. So ``padding=True`` is refused by `transformers`; batch texts of one length, e.g. with
``truncation=True, max_length=n``. The model's context is known: a trained model's saved tokenizer has
``model_max_length`` = its block size, so ``truncation=True`` cuts prompts to what the model accepts.

Two encoders share `TEXT8_ALPHABET`, so their ids agree by construction:

- `build_char_tokenizer()`: a plain `PreTrainedTokenizerFast` (a `tokenizers` pipeline, no custom code), so
  ``save_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)`` work offline. For prompts and decoding.
- `encode_text8()`: a lookup table over bytes, about 1,000 times faster, for whole corpora.
"""

import re

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

TEXT8_ALPHABET = "abcdefghijklmnopqrstuvwxyz "
"""The 27 symbols, in id order."""

_NOT_IN_ALPHABET = 255
_BYTE_TO_ID = np.full(256, _NOT_IN_ALPHABET, dtype=np.uint8)
_BYTE_TO_ID[np.frombuffer(TEXT8_ALPHABET.encode("ascii"), dtype=np.uint8)] = np.arange(len(TEXT8_ALPHABET))


def text8_normalize(text: str) -> str:
    """Text8 normalisation: lowercase, every run of characters outside ``a``-``z`` becomes one space, then strip.

    Digits are not spelled out (unlike Matt Mahoney's script); ``"Don't!"`` becomes ``"don t"``. This is the
    normalisation of ``shared/data/literary-text8`` and of the shipped corpus ``data/tiny-literary``.
    """
    return re.sub(r"[^a-z]+", " ", text.lower()).strip()


def encode_text8(text: str) -> np.ndarray:
    """Character ids (``uint8``, shape ``(len(text),)``) of text made of the 27 symbols only.

    Raises:
        ValueError: naming the characters outside the alphabet (normalise with `text8_normalize`).
    """
    ids = _BYTE_TO_ID[np.frombuffer(text.encode("utf-8"), dtype=np.uint8)]
    if (ids == _NOT_IN_ALPHABET).any():
        outside = sorted(set(text) - set(TEXT8_ALPHABET))
        raise ValueError(
            f"text has {len(outside)} kinds of characters outside the text8 alphabet (a-z and space), e.g. "
            f"{', '.join(map(repr, outside[:10]))}; normalise it first with text8_normalize() "
            "(load_text8(..., normalize=True), DataConfig(normalize_text8=True))"
        )
    return ids


def decode_text8(ids) -> str:
    """Inverse of `encode_text8` for any integer sequence of ids in ``[0, 27)``."""
    return "".join(TEXT8_ALPHABET[i] for i in np.asarray(ids, dtype=np.int64).tolist())


def is_character_tokenizer(tokenizer) -> bool:
    """Whether `tokenizer` is the 27-symbol alphabet and nothing else (no EOS added): the one test of "is this a
    character model" that decides BPC over perplexity in training's logs and evaluation's headline, and the character
    stream over EOS-separated documents in evaluation's corpus (what ``--tokenizer char`` trains on)."""
    return tokenizer.get_vocab() == {symbol: i for i, symbol in enumerate(TEXT8_ALPHABET)}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The 27-symbol character tokenizer (``len(tokenizer) == 27``, no special tokens).

    Encoding is lossless on every string over the 27 symbols (double spaces included), so
    ``decode(encode(s)) == s`` and ``encode(decode(ids)) == ids``. Any other text is normalised first, in the
    tokenizer itself so that a reloaded copy does the same: uppercase is lowercased and every run of non-letters
    that holds anything besides spaces becomes one space (``"Hello, World!"`` -> ``"hello world "``; unlike
    `text8_normalize` the ends are not stripped, since a chunk of text8 may start or end with a space).
    """
    vocab = {symbol: i for i, symbol in enumerate(TEXT8_ALPHABET)}
    tokenizer = Tokenizer(models.WordLevel(vocab))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex(r"[^a-z]*[^a-z ][^a-z]*"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tokenizer.decoder = decoders.Fuse()  # join characters without inserting spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False)
