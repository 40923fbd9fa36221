"""Unconditional samples of fixed length from the evaluated model, as token ids (N, T).

- TarFlowLM: ``model.generate(max_new_tokens=T, num_return_sequences=n, do_sample=True, noise_temperature=τ)``
  (base noise scaled by τ, paper §7.1; the final draw from p(x|z) stays at temperature 1).
- Causal LM baseline: ancestral sampling after a start token (BOS, else EOS: GPT-2's ``<|endoftext|>``, which also
  starts MDLM's OpenWebText blocks), optionally nucleus (ReMDM's AR rows use top-p 0.9). Generation never stops
  early: EOS may be sampled but does not end the sample, so every sample has exactly T tokens, like the 1024-token
  samples of MDLM/ReMDM. The start token is not part of the returned sample.
"""

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .cli import SettingsError
from .loading import LoadedModel


def causal_lm_start_token(tokenizer, model=None) -> int | None:
    """BOS, else EOS of the tokenizer, else the model config's `bos_token_id` (the training script's GPT-2 baseline on
    27 characters stores its start token, a space, there); None when there is none at all."""
    model_bos = getattr(getattr(model, "config", None), "bos_token_id", None)
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id, model_bos):
        if token_id is not None:
            return token_id
    return None


@torch.no_grad()
def causal_lm_samples(model, start_token_id: int, num: int, length: int, temperature: float,
                      top_p: float | None, device) -> torch.Tensor:
    settings = GenerationConfig(do_sample=True, max_new_tokens=length, min_new_tokens=0, temperature=temperature,
                                top_p=top_p, top_k=None, eos_token_id=None, pad_token_id=start_token_id)
    start = torch.full((num, 1), start_token_id, dtype=torch.long, device=device)
    out = model.generate(input_ids=start, attention_mask=torch.ones_like(start), generation_config=settings)
    return out[:, 1:]


@torch.no_grad()
def latent_samples(model, num: int, length: int, temperature: float) -> torch.Tensor:
    # τ scales the base noise only: generate's `temperature` would also temper the final draw from p(x|z)
    return model.generate(max_new_tokens=length, num_return_sequences=num, do_sample=True,
                          noise_temperature=temperature, temperature=1.0)


def draw_samples(loaded: LoadedModel, num_samples: int, length: int, batch_size: int, temperature: float = 1.0,
                 top_p: float | None = None, device="cpu") -> torch.Tensor:
    """``num_samples`` samples of ``length`` tokens, drawn ``batch_size`` at a time → LongTensor (N, T) on CPU."""
    if loaded.is_latent and top_p is not None:
        raise SettingsError(f"--top_p {top_p}: applies to causal LM baselines only; TarFlowLM samples with "
                            "--temperature (the scale of its base noise)")
    batches = []
    for start in tqdm(range(0, num_samples, batch_size), desc="sampling", unit="batch"):
        num = min(batch_size, num_samples - start)
        if loaded.is_latent:
            batch = latent_samples(loaded.model, num, length, temperature)
        else:
            start_id = causal_lm_start_token(loaded.tokenizer, loaded.model)
            if start_id is None:
                raise ValueError("the causal LM has no BOS/EOS token (tokenizer or config) to start unconditional samples")
            batch = causal_lm_samples(loaded.model, start_id, num, length, temperature, top_p, device)
        batches.append(batch.cpu())
    samples = torch.cat(batches)
    if samples.shape != (num_samples, length):
        raise ValueError(f"the model returned samples of shape {tuple(samples.shape)}, "
                         f"expected ({num_samples}, {length})")
    return samples
