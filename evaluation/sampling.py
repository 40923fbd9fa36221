"""Unconditional samples of fixed length from the evaluated model, as token ids (N, T).

- TarFlowLM: ``model.generate(max_new_tokens=T, num_return_sequences=n, do_sample=True, noise_temperature=τ,
  temperature=t, top_p=p)``: τ scales the base noise u (an evaluation setting the paper does not use); with a tied
  Mix-d first layer, t and p act on its next-token distribution π_t as on a causal LM's logits
  (``modeling_tarflow/next_token_controls.py``); in other stacks they reshape the final draw from p(x|z).
- Causal LM baseline: ancestral sampling after a start token (``evaluation.causal_lm``), optionally tempered and
  nucleus (ReMDM's AR rows use top-p 0.9). Generation never stops early: EOS may be sampled but does not end the
  sample, so every sample has exactly T tokens, like the 1024-token samples of MDLM/ReMDM.
"""

import torch
from tqdm.auto import tqdm

from . import causal_lm
from .cli import SettingsError
from .loading import LoadedModel


@torch.no_grad()
def latent_samples(model, num: int, length: int, temperature: float = 1.0, top_p: float | None = None,
                   noise_temperature: float = 1.0) -> torch.Tensor:
    """`num` samples of `length` tokens: τ = `noise_temperature` on the base noise, `temperature` and `top_p` as
    `generate` takes them (see the module docstring); an unset top_p is not passed."""
    controls = {} if top_p is None else {"top_p": top_p}
    return model.generate(max_new_tokens=length, num_return_sequences=num, do_sample=True,
                          noise_temperature=noise_temperature, temperature=temperature, **controls)


def draw_samples(loaded: LoadedModel, num_samples: int, length: int, batch_size: int, temperature: float = 1.0,
                 top_p: float | None = None, noise_temperature: float = 1.0) -> torch.Tensor:
    """``num_samples`` samples of ``length`` tokens, drawn ``batch_size`` at a time → LongTensor (N, T) on CPU;
    `noise_temperature` is TarFlowLM's τ (a causal LM has none: it must be 1)."""
    if not loaded.is_latent and noise_temperature != 1.0:
        raise SettingsError(f"--noise_temperature {noise_temperature}: TarFlowLM's base-noise scale; a causal LM "
                            "has no base noise (use --temperature)")
    batches = []
    for start in tqdm(range(0, num_samples, batch_size), desc="sampling", unit="batch"):
        num = min(batch_size, num_samples - start)
        if loaded.is_latent:
            batch = latent_samples(loaded.model, num, length, temperature, top_p, noise_temperature)
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
