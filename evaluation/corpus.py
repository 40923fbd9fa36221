"""Evaluation text as fixed-length blocks, cut by the training data layer (``training.data``), so that a model is
scored on exactly the kind of blocks it was trained and validated on.

Two tracks, chosen by the evaluated model's tokenizer:

- characters (the tokenizer is the 27-symbol text8 alphabet, ``is_character_tokenizer``): ``load_text8`` +
  ``encode_text8``; no BOS/EOS, so one token is one character and bits per token is BPC;
- documents (any other tokenizer, e.g. GPT-2 BPE): ``load_openwebtext`` + ``tokenize_documents`` (each document
  followed by one EOS, as MDLM's OpenWebText packing), concatenated.

Either stream is cut into ⌊N/T⌋ non-overlapping blocks of T tokens (``TokenBlocks``); the final partial block is
dropped and counted. Sources are whatever ``training.data`` reads: ``tiny-literary`` (shipped), ``text8``,
``openwebtext`` (Hub), another Hub id, a folder with ``train``/``valid``/``test`` files, or one file split 90/5/5.
"""

from dataclasses import dataclass

import pyarrow.compute
import torch

from training.data import (TokenBlocks, encode_characters, evenly_spaced, load_openwebtext, load_text8,
                           tokenize_documents)
from training.errors import DataError
from training.tokenization_char import is_character_tokenizer

from .tokens import batched


def default_split(tokenizer) -> str:
    """The split the paper reports: text8 test for characters, OpenWebText validation for documents."""
    return "test" if is_character_tokenizer(tokenizer) else "validation"


@dataclass
class Blocks:
    """Chosen blocks (``indices``) of one split's token stream, read lazily batch by batch."""

    stream: TokenBlocks
    indices: list[int]
    stream_tokens: int

    @property
    def block_size(self) -> int:
        return self.stream.block_size

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, indices) -> torch.Tensor:
        """Blocks ``indices`` (positions in ``self.indices``) stacked → LongTensor (len(indices), T)."""
        return torch.stack([self.stream[self.indices[i]]["input_ids"] for i in indices])

    def batches(self, batch_size: int):
        """The blocks in order, ``batch_size`` at a time, as LongTensors (B, T)."""
        for positions in batched(range(len(self)), batch_size):
            yield self.take(positions)

    def counts(self) -> dict:
        return {"blocks": len(self), "block_size": self.block_size, "tokens": len(self) * self.block_size,
                "blocks_in_split": len(self.stream), "stream_tokens": self.stream_tokens,
                "dropped_tokens": self.stream_tokens - len(self.stream) * self.block_size}


def split_stream(source: str, split: str, tokenizer) -> tuple[object, int]:
    """The token stream of one split (an id array, or a dataset of per-document ids) and its length in tokens."""
    if is_character_tokenizer(tokenizer):
        ids = encode_characters(load_text8(source, split), source, split, "a character model reads text8-"
                                "normalised text only: normalise the file as training's --normalize_text8 does "
                                "(training.tokenization_char.text8_normalize)")
        return ids, len(ids)
    documents = tokenize_documents(load_openwebtext(source, split), tokenizer)
    lengths = pyarrow.compute.list_value_length(documents.data.column("input_ids"))
    return documents, pyarrow.compute.sum(lengths).as_py() or 0


def load_blocks(source: str, split: str, tokenizer, block_size: int, max_blocks: int | None = None) -> Blocks:
    """Blocks of ``block_size`` tokens of one split, at most ``max_blocks`` of them (evenly spaced)."""
    stream, stream_tokens = split_stream(source, split, tokenizer)
    blocks = TokenBlocks(stream, block_size)
    if len(blocks) == 0:
        raise DataError(f"the {split} split of {source!r} has {stream_tokens} tokens, fewer than one block of "
                        f"{block_size}")
    return Blocks(blocks, evenly_spaced(len(blocks), max_blocks), stream_tokens)


def choose_blocks(num_available: int, num_wanted: int, seed: int) -> tuple[list[int], bool]:
    """Positions of ``num_wanted`` random blocks (MAUVE references), without replacement when there are enough.

    Returns ``(positions, with_replacement)``; ReMDM draws each reference from a freshly shuffled loader, which can
    also repeat blocks.
    """
    generator = torch.Generator().manual_seed(seed)
    if num_wanted <= num_available:
        return torch.randperm(num_available, generator=generator)[:num_wanted].tolist(), False
    return torch.randint(num_available, (num_wanted,), generator=generator).tolist(), True
