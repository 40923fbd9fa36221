"""The autoregressive baseline beside every TarFlowLM result (the "Transformer AR" rows of the paper's Table 2):
a `transformers.GPT2LMHeadModel` with TarFlowLM's total depth, width, heads, MLP width, dropout and vocabulary.

Every block is scored in full: it is preceded by a start token, so the loss is the exact −log p(x_1..x_T) per
token, comparable with TarFlowLM's NELBO over the same T tokens. The start token is the tokenizer's BOS, else its
EOS (GPT-2 BPE: ``<|endoftext|>``, as in MDLM's OpenWebText blocks), else a space (the 27-symbol alphabet has no
special tokens; a space is the natural left context of a text8 chunk). It is stored as ``bos_token_id``.
"""

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from modeling_tarflow import TarFlowConfig


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # GPT-2's tokenizer names <|endoftext|> as BOS, EOS and UNK at once, so only the space lookup (which answers
    # UNK for a missing token) is checked against UNK
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    space_id = tokenizer.convert_tokens_to_ids(" ")
    if space_id is not None and space_id != tokenizer.unk_token_id:
        return space_id
    raise ValueError("the tokenizer has no BOS, EOS or space token to start the baseline's blocks with")


def baseline_config(tarflow: TarFlowConfig, tokenizer: PreTrainedTokenizerBase) -> GPT2Config:
    """GPT-2 of TarFlowLM's size: n_layer = all flow transformers' layers, one more position for the start token."""
    return GPT2Config(
        vocab_size=tarflow.vocab_size, n_positions=tarflow.max_position_embeddings + 1,
        n_embd=tarflow.hidden_size, n_layer=tarflow.num_transformer_layers, n_head=tarflow.num_attention_heads,
        n_inner=tarflow.intermediate_size, resid_pdrop=tarflow.dropout, embd_pdrop=tarflow.dropout,
        attn_pdrop=tarflow.dropout, layer_norm_epsilon=tarflow.layer_norm_eps,
        initializer_range=tarflow.initializer_range, bos_token_id=start_token_id(tokenizer),
        eos_token_id=tokenizer.eos_token_id, pad_token_id=start_token_id(tokenizer))


def build_baseline(tarflow: TarFlowConfig, tokenizer: PreTrainedTokenizerBase) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(baseline_config(tarflow, tokenizer))


def baseline_block_nll(model, input_ids: torch.LongTensor, start_token_id: int) -> torch.Tensor:
    """−log p(x_1..x_T) in nats per block (B,), each token predicted from the start token and the tokens before.
    (`model` may be wrapped for data parallelism, hence the start token as an argument.)"""
    ids = torch.cat([torch.full_like(input_ids[:, :1], start_token_id), input_ids], dim=1)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]  # blocks are never padded
    return F.cross_entropy(logits.float().transpose(1, 2), input_ids, reduction="none").sum(-1)


@torch.no_grad()
def baseline_samples(model, num_samples: int, length: int) -> torch.LongTensor:
    """Ancestral samples (num_samples, length) after the start token; temperature 1, no top-k / top-p."""
    start = torch.full((num_samples, 1), model.config.bos_token_id, device=model.device)
    settings = GenerationConfig(do_sample=True, max_new_tokens=length, top_k=None,
                                pad_token_id=model.config.pad_token_id)
    return model.generate(input_ids=start, attention_mask=torch.ones_like(start), generation_config=settings)[:, 1:]
