"""Validation during and after training: the mean loss per token over held-out blocks, as BPC or perplexity."""

import math

import torch
from accelerate import Accelerator

from training.rng import isolated_rng
from training.stages import Stage


def loss_metrics(nats_per_token: float, characters: bool) -> dict[str, float]:
    """The loss in nats per token, plus BPC (characters) or perplexity (word pieces)."""
    bits = nats_per_token / math.log(2)
    return {"loss": nats_per_token, "bpc": bits} if characters else \
        {"loss": nats_per_token, "ppl": math.exp(min(nats_per_token, 700.0)), "bits_per_token": bits}


@torch.no_grad()
def evaluate_loss(accelerator: Accelerator, recipe, model: torch.nn.Module, loader, stage: Stage,
                  seed: int) -> float:
    """Mean −log-likelihood bound in nats per token over every block of `loader` (sharded across processes).

    TarFlowLM's z noise is drawn from an RNG seeded with `seed` and isolated from training, so successive
    evaluations are comparable and resuming a run reproduces them.
    """
    was_training = model.training
    model.eval()
    per_block, block_size = [], None
    with isolated_rng(seed, accelerator.device), accelerator.autocast():
        for batch in loader:
            input_ids = batch["input_ids"]
            block_size = input_ids.shape[1]
            per_block.append(accelerator.gather_for_metrics(recipe.block_nll(model, input_ids, stage).float()))
    model.train(was_training)
    if block_size is None:
        raise ValueError("the validation split has no blocks; lower --block_size or raise --max_eval_blocks")
    return torch.cat(per_block).double().mean().item() / block_size
