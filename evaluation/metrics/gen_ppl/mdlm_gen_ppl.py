"""Generative perplexity: how likely a reference causal LM finds the samples (paper Table 6, MDLM/ReMDM protocol).

Protocol (kuleshov-group/mdlm ``diffusion.py`` ``compute_generative_perplexity``; DUO ``metrics.py``):

1. the samples are decoded to text with special tokens kept (the caller does this);
2. each text is retokenised with the reference tokenizer (its default special tokens: none for GPT-2), truncated
   to ``max_length`` tokens (MDLM: the sample length, 1024);
3. each sequence is cut into non-overlapping chunks of ``context_size`` tokens (1024 for GPT-2), each scored on its
   own: nll_t = −log p_ref(y_t | y_<t in the chunk); a chunk's first token is not scored;
4. first-EOS rule: a target counts if it is not EOS or if it is the first EOS of its chunk; later EOS do not;
5. token-weighted aggregation over all samples:  Gen-PPL = exp(Σ w_t·nll_t / Σ w_t).

Per-sample perplexities exp(Σ_sample w·nll / Σ_sample w) are kept too, with their mean (the SEDD / ``evaluate``
convention, which is not comparable with the token-weighted figure).

Deviation: padding is never scored. MDLM pads a batch with EOS, so a sample that contains no EOS has its first
padding position scored as a "first EOS"; with batch size 1 (ReMDM's setting) there is no padding and both agree.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .tokens import batched, encode_texts, right_pad


def counted_targets(ids: torch.Tensor, attention_mask: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """Which targets y_1..y_{L−1} of each chunk (B, L) enter the PPL: real tokens that are not EOS, plus the first
    EOS of the chunk → bool (B, L − 1)."""
    real = attention_mask.bool()
    if eos_id is None:
        return real[:, 1:]
    is_eos = (ids == eos_id) & real
    first_eos = is_eos & (is_eos.cumsum(dim=-1) == 1)
    return (real & (~is_eos | first_eos))[:, 1:]


@torch.no_grad()
def chunk_nll(model, ids: torch.Tensor, attention_mask: torch.Tensor, eos_id: int | None):
    """Summed NLL (nats) and number of counted targets per row of one chunk (B, L) → ((B,), (B,))."""
    logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, :-1].float()
    nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").double()
    counted = counted_targets(ids, attention_mask, eos_id)
    return (nll * counted).sum(dim=1), counted.sum(dim=1)


@dataclass
class GenerativePerplexity:
    """Per-sample summed NLL (nats) and counted tokens under the reference model."""

    sample_nll: list[float]
    sample_tokens: list[int]

    @property
    def perplexity(self) -> float:
        """Token-weighted corpus Gen-PPL (the paper's number)."""
        return math.exp(sum(self.sample_nll) / sum(self.sample_tokens))

    @property
    def standard_error(self) -> float | None:
        """Standard error of the Gen-PPL over samples: the ratio estimator r = Σ nll / Σ n has
        SE(r) ≈ √(Σ (nll_i − r·n_i)² / (N(N − 1))) / mean(n), and SE(exp r) ≈ exp(r)·SE(r) (delta method)."""
        count = len(self.sample_nll)
        if count < 2:
            return None
        rate = sum(self.sample_nll) / sum(self.sample_tokens)
        residuals = sum((nll - rate * n) ** 2 for nll, n in zip(self.sample_nll, self.sample_tokens))
        return self.perplexity * math.sqrt(residuals / (count * (count - 1))) / (sum(self.sample_tokens) / count)

    @property
    def sample_perplexities(self) -> list[float | None]:
        return [math.exp(nll / n) if n else None for nll, n in zip(self.sample_nll, self.sample_tokens)]

    def to_dict(self) -> dict:
        per_sample = [p for p in self.sample_perplexities if p is not None]
        return {"gen_ppl": self.perplexity, "standard_error": self.standard_error, "nll_nats": sum(self.sample_nll), "tokens": sum(self.sample_tokens),
                "mean_of_per_sample_ppl": sum(per_sample) / len(per_sample),
                "per_sample_ppl": self.sample_perplexities, "per_sample_tokens": self.sample_tokens}


def generative_perplexity(texts: list[str], model, tokenizer, *, context_size: int = 1024,
                          max_length: int | None = None, batch_size: int = 8, device="cpu") -> GenerativePerplexity:
    """Gen-PPL of ``texts`` under the causal LM ``model`` with its ``tokenizer`` (protocol in the module docstring)."""
    return sequence_perplexity(encode_texts(tokenizer, texts, max_length), model, tokenizer.eos_token_id,
                               context_size=context_size, batch_size=batch_size, device=device)


def sequence_perplexity(sequences: list[list[int]], model, eos_id: int | None, *, context_size: int = 1024,
                        batch_size: int = 8, device="cpu") -> GenerativePerplexity:
    """Gen-PPL of retokenised ``sequences`` (steps 3–5 of the protocol), EOS ``eos_id`` (None: no EOS rule)."""
    sample_nll, sample_tokens = [], []
    for batch in tqdm(list(batched(sequences, batch_size)), desc="gen-PPL", unit="batch"):
        ids, mask = right_pad(batch, device)
        nll = torch.zeros(len(batch), dtype=torch.float64, device=device)
        tokens = torch.zeros(len(batch), dtype=torch.long, device=device)
        for chunk_ids, chunk_mask in zip(ids.split(context_size, dim=1), mask.split(context_size, dim=1)):
            chunk_sum, chunk_count = chunk_nll(model, chunk_ids, chunk_mask, eos_id)
            nll, tokens = nll + chunk_sum, tokens + chunk_count
        sample_nll += nll.tolist()
        sample_tokens += tokens.tolist()
    return GenerativePerplexity(sample_nll, sample_tokens)
