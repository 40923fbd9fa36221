"""The two models `training/run.py` trains, behind one interface: build, score a batch of blocks, sample.

- ``tarflow``: `TarFlowForCausalFlowLM`; the score is the NELBO with one z ~ q(z|x) (an upper bound on −log p(x)),
  using the flow layers of the current progressive stage.
- ``gpt2``: the `GPT2LMHeadModel` baseline of the same size (``training/baseline.py``); the score is the exact NLL.
"""

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM
from training.baseline import baseline_block_nll, baseline_samples, build_baseline
from training.rng import isolated_rng
from training.stages import Stage


def build_tarflow_config(model_config: dict, tokenizer: PreTrainedTokenizerBase, block_size: int) -> TarFlowConfig:
    """`TarFlowConfig` from the settings' ``model_config``; the vocabulary and context default to the data's."""
    values = {"vocab_size": len(tokenizer), "max_position_embeddings": block_size, **model_config}
    config = TarFlowConfig(**values)
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"model_config.vocab_size ({config.vocab_size}) is smaller than the tokenizer's "
                         f"vocabulary ({len(tokenizer)})")
    if block_size > config.max_position_embeddings:
        raise ValueError(f"--block_size {block_size} exceeds model_config.max_position_embeddings "
                         f"({config.max_position_embeddings})")
    return config


class TarFlowRecipe:
    kind = "tarflow"
    progressive = True

    def build(self, config: TarFlowConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
        return TarFlowForCausalFlowLM(config)

    def block_nll(self, model: nn.Module, input_ids: torch.LongTensor, stage: Stage) -> torch.Tensor:
        """NELBO in nats per block (B,) with the stage's flow layers (the frozen ones under no_grad); u itself is
        not needed for the loss, so the last layer returns only its density (``output_u=False``)."""
        return model(input_ids, num_flow_layers=stage.num_flow_layers,
                     num_frozen_flow_layers=stage.num_frozen_flow_layers, output_u=False).nelbo

    def sample(self, model: nn.Module, num_samples: int, length: int, seed: int) -> torch.LongTensor:
        return model.generate(max_new_tokens=length, num_return_sequences=num_samples, seed=seed, do_sample=True)


class BaselineRecipe:
    kind = "gpt2"
    progressive = False

    def __init__(self):
        self.start_token_id: int | None = None

    def build(self, config: TarFlowConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
        model = build_baseline(config, tokenizer)
        self.start_token_id = model.config.bos_token_id
        return model

    def block_nll(self, model: nn.Module, input_ids: torch.LongTensor, stage: Stage) -> torch.Tensor:
        return baseline_block_nll(model, input_ids, self.start_token_id)

    def sample(self, model: nn.Module, num_samples: int, length: int, seed: int) -> torch.LongTensor:
        with isolated_rng(seed, model.device):
            return baseline_samples(model, num_samples, length)


RECIPES = {recipe.kind: recipe for recipe in (TarFlowRecipe, BaselineRecipe)}
"""The recipe class of each ``--model``; instantiate one per run."""
