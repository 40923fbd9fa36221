"""Text features for MAUVE, computed by the harness and passed to ``mauve.compute_mauve`` as p/q features.

Two recipes, chosen with ``kind``:

- ``last_token`` (MAUVE's own, GPT-2 Large in the paper): the final-layer hidden state at the last token of the
  text, tokenised by the featurizer's tokenizer and truncated to ``max_length`` = 1024 tokens
  (``mauve.utils.featurize_tokens_from_model``);
- ``mean_pooled`` (sentence encoders such as all-MiniLM-L6-v2): the attention-masked mean of the final hidden
  states, L2-normalised, as sentence-transformers computes it; truncated to 256 word pieces (that model's limit).

MAUVE L2-normalises features again itself. Empty texts have no last token: MAUVE drops them; here the caller must
drop them first (``drop_empty``), so that the number dropped is reported.
"""

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .tokens import batched, encode_texts, right_pad

FEATURE_KINDS = ("last_token", "mean_pooled")
DEFAULT_MAX_LENGTH = {"last_token": 1024, "mean_pooled": 256}


def default_feature_kind(model_folder) -> str:
    """``mean_pooled`` for a sentence-transformers folder (it has ``modules.json``), else MAUVE's ``last_token``."""
    return "mean_pooled" if (Path(model_folder) / "modules.json").is_file() else "last_token"


def drop_empty(texts: list[str]) -> tuple[list[str], int]:
    """The texts with visible content, and how many were empty (MAUVE silently drops those)."""
    kept = [text for text in texts if text.strip()]
    return kept, len(texts) - len(kept)


def pool(hidden: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, L, d) hidden states → (B, d) features: the last real token (``last_token``), or the masked,
    L2-normalised mean (``mean_pooled``)."""
    if kind == "last_token":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    return torch.nn.functional.normalize(mean, dim=-1)


@torch.no_grad()
def text_features(texts: list[str], model, tokenizer, kind: str, max_length: int | None = None,
                  batch_size: int = 8, device="cpu") -> np.ndarray:
    """Features (N, d) float32 of non-empty ``texts`` under an encoder / base LM ``model`` (see module docstring).

    Texts are processed longest first so that a batch pads little; the rows come back in the input order.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; expected one of {FEATURE_KINDS}")
    sequences = encode_texts(tokenizer, texts, max_length or DEFAULT_MAX_LENGTH[kind])
    if any(len(s) == 0 for s in sequences):
        raise ValueError("a text has no tokens; remove empty texts with drop_empty() first")
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    features = [None] * len(sequences)
    for indices in tqdm(list(batched(order, batch_size)), desc=f"features ({kind})", unit="batch"):
        ids, mask = right_pad([sequences[i] for i in indices], device)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        for i, row in zip(indices, pool(hidden, mask, kind).cpu().numpy()):
            features[i] = row
    return np.stack(features).astype(np.float32)
