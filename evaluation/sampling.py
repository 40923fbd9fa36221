"""Unconditional samples of fixed length from the evaluated model, as token ids (N, T).

- TarFlowLM: ``model.generate(max_new_tokens=T, num_return_sequences=n, do_sample=True, noise_temperature=τ)``
  (the base noise u scaled by τ, an evaluation setting the paper does not use; the final draw from p(x|z) stays at
  temperature 1).
- Causal LM baseline: ancestral sampling after a start token (``evaluation.causal_lm``), optionally nucleus
  (ReMDM's AR rows use top-p 0.9). Generation never stops early: EOS may be sampled but does not end the sample, so
  every sample has exactly T tokens, like the 1024-token samples of MDLM/ReMDM.
"""

import torch
from tqdm.auto import tqdm

from . import causal_lm
from .cli import SettingsError
from .loading import LoadedModel


@torch.no_grad()
def latent_samples(model, num: int, length: int, temperature: float) -> torch.Tensor:
    # τ scales the base noise only: generate's `temperature` would also temper the final draw from p(x|z)
    return model.generate(max_new_tokens=length, num_return_sequences=num, do_sample=True,
                          noise_temperature=temperature, temperature=1.0)


def draw_samples(loaded: LoadedModel, num_samples: int, length: int, batch_size: int, temperature: float = 1.0,
                 top_p: float | None = None) -> torch.Tensor:
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
            start_id = causal_lm.start_token_id(loaded.tokenizer, loaded.model.config)
            if start_id is None:
                raise ValueError("the causal LM has no BOS/EOS token (tokenizer or config) to start unconditional samples")
            batch = causal_lm.samples(loaded.model, start_id, num, length, stop_at_eos=False,
                                      temperature=temperature, top_p=top_p)
        batches.append(batch.cpu())
    samples = torch.cat(batches)
    if samples.shape != (num_samples, length):
        raise ValueError(f"the model returned samples of shape {tuple(samples.shape)}, "
                         f"expected ({num_samples}, {length})")
    return samples
