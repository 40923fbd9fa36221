"""Token lists to model inputs: tokenise texts the way the reference code does, and right-pad batches."""

import torch


def encode_texts(tokenizer, texts, max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text with the tokenizer's default special tokens (as MDLM's retokenisation and MAUVE's
    featurisation call it: GPT-2 adds none, BERT-style encoders add [CLS]/[SEP]), truncated to ``max_length``."""
    encoded = tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)
    return [list(ids) for ids in encoded["input_ids"]]


def right_pad(sequences: list[list[int]], device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)``, both (B, L_max): padding goes on the right with id 0 and mask 0.

    The pad id is never seen by a model (masked) nor scored, so the tokenizer's pad token does not matter.
    """
    length = max((len(s) for s in sequences), default=0)
    ids = torch.zeros(len(sequences), length, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids.to(device), mask.to(device)


def batched(items, batch_size: int):
    """Consecutive slices of ``items`` with at most ``batch_size`` elements."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]
