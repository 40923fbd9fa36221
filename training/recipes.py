"""The two models `training/run.py` trains, behind one interface: build, score a batch of blocks, sample.

- ``tarflow``: `TarFlowForCausalFlowLM`; the score is the NELBO with one z ~ q(z|x) (an upper bound on −log p(x),
  §3), using the flow layers of the current progressive stage (§3.3).
- ``gpt2``: the autoregressive baseline beside every TarFlowLM result (the "Transformer AR" rows of Table 2), a
  `transformers.GPT2LMHeadModel` with TarFlowLM's total depth, width, heads, MLP width, dropout and vocabulary. Every
  block is scored in full after a start token (`evaluation.causal_lm`), so its loss is the exact −log p(x_1..x_T)
  per token, comparable with TarFlowLM's NELBO over the same T tokens. The start token is stored as
  ``bos_token_id``.
"""

import contextlib

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from evaluation import causal_lm
from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM
from training.errors import SettingsError
from training.stages import Stage


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device):
    """Inside: the global torch RNG (and this CUDA device's) seeded with `seed`; on exit: restored as it was, so
    that validating or sampling mid-run changes nothing in the training draws after it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_tarflow_config(model_config: dict, tokenizer: PreTrainedTokenizerBase, block_size: int) -> TarFlowConfig:
    """`TarFlowConfig` from the settings' ``model_config``; the vocabulary and context default to the data's."""
    values = {"vocab_size": len(tokenizer), "max_position_embeddings": block_size, **model_config}
    try:
        config = TarFlowConfig(**values)
    except (TypeError, ValueError) as error:
        raise SettingsError(f"--model_config: {error}") from error
    if config.vocab_size < len(tokenizer):
        raise SettingsError(f"model_config.vocab_size ({config.vocab_size}) is smaller than the tokenizer's "
                         f"vocabulary ({len(tokenizer)})")
    if block_size > config.max_position_embeddings:
        raise SettingsError(f"--block_size {block_size} exceeds model_config.max_position_embeddings "
                         f"({config.max_position_embeddings})")
    return config


def baseline_config(tarflow: TarFlowConfig, tokenizer: PreTrainedTokenizerBase) -> GPT2Config:
    """GPT-2 of TarFlowLM's size: n_layer = all flow transformers' layers, one more position for the start token."""
    start = causal_lm.start_token_id(tokenizer, allow_space=True)
    if start is None:
        raise ValueError("the tokenizer has no BOS, EOS or space token to start the baseline's blocks with")
    return GPT2Config(
        vocab_size=tarflow.vocab_size, n_positions=tarflow.max_position_embeddings + 1,
        n_embd=tarflow.hidden_size, n_layer=tarflow.num_transformer_layers, n_head=tarflow.num_attention_heads,
        n_inner=tarflow.intermediate_size, resid_pdrop=tarflow.dropout, embd_pdrop=tarflow.dropout,
        attn_pdrop=tarflow.dropout, layer_norm_epsilon=tarflow.layer_norm_eps,
        initializer_range=tarflow.initializer_range, bos_token_id=start, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=start)


def build_baseline(tarflow: TarFlowConfig, tokenizer: PreTrainedTokenizerBase) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(baseline_config(tarflow, tokenizer))


def baseline_block_nll(model, input_ids: torch.LongTensor, start_token_id: int) -> torch.Tensor:
    """−log p(x_1..x_T) in nats per block (B,), every token predicted from the start token and the tokens before."""
    return causal_lm.token_nll(model, input_ids, start_token_id).sum(-1)


class TarFlowRecipe:
    kind = "tarflow"
    progressive = True

    def build(self, config: TarFlowConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
        return TarFlowForCausalFlowLM(config)

    def block_terms(self, model: nn.Module, input_ids: torch.LongTensor, stage: Stage) -> dict[str, torch.Tensor]:
        """NELBO in nats per block (B,) as ``nll``, and its parts (Eq. 3): NELBO = −log p(x|z) − log p(z) +
        log q(z|x), with the stage's flow layers (the frozen ones under no_grad); u itself is not needed for the
        loss, so the last layer returns only its density (``output_u=False``)."""
        out = model(input_ids, num_flow_layers=stage.num_flow_layers,
                    num_frozen_flow_layers=stage.num_frozen_flow_layers, output_u=False)
        return {"nll": out.nelbo, "neg_log_p_x_given_z": -out.log_p_x_given_z, "neg_log_p_z": -out.log_p_z,
                "log_q_z": out.log_q_z}

    def block_nll(self, model: nn.Module, input_ids: torch.LongTensor, stage: Stage) -> torch.Tensor:
        """NELBO in nats per block (B,) (see `block_terms`)."""
        return self.block_terms(model, input_ids, stage)["nll"]

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

    def block_terms(self, model: nn.Module, input_ids: torch.LongTensor, stage: Stage) -> dict[str, torch.Tensor]:
        """The exact −log p(x) per block as ``nll``; a causal LM's loss has no parts."""
        return {"nll": self.block_nll(model, input_ids, stage)}

    def sample(self, model: nn.Module, num_samples: int, length: int, seed: int) -> torch.LongTensor:
        """Ancestral samples after the start token at temperature 1, stopping at EOS."""
        with isolated_rng(seed, model.device):
            return causal_lm.samples(model, model.config.bos_token_id, num_samples, length)


RECIPES = {recipe.kind: recipe for recipe in (TarFlowRecipe, BaselineRecipe)}
"""The recipe class of each ``--model``; instantiate one per run."""
