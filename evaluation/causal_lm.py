"""A causal LM scored and sampled after a start token: the autoregressive side of every TarFlowLM comparison.

Training's GPT-2 baseline (``training/recipes.py``) and the evaluation of any ``transformers`` causal LM
(``evaluation.likelihood``, ``evaluation.sampling``) share these three pieces, so that the baseline is trained on the
very quantity it is evaluated with:

- the start token: the tokenizer's BOS, else its EOS (GPT-2 BPE: ``<|endoftext|>``, which also starts MDLM's
  OpenWebText blocks), else the one a model stores as ``bos_token_id``, else (only for a new model) a space, the
  natural left context of a text8 chunk, since the 27-symbol alphabet has no special tokens;
- −log p(x_t | start, x_<t) of every token of a block, so that the whole block is scored;
- ancestral samples after the start token, which is not part of the returned sample.
"""

import torch
import torch.nn.functional as F
from transformers import GenerationConfig


def start_token_id(tokenizer, model_config=None, *, allow_space: bool = False) -> int | None:
    """The id that precedes every block (rule in the module docstring); None when there is none.

    `model_config` is a trained model's config (its ``bos_token_id`` is the start token it was trained with);
    `allow_space` lets a model that is about to be built start from a space.
    """
    candidates = [tokenizer.bos_token_id, tokenizer.eos_token_id, getattr(model_config, "bos_token_id", None)]
    space = tokenizer.convert_tokens_to_ids(" ") if allow_space else None
    if space is not None and space != tokenizer.unk_token_id:  # a vocabulary without " " answers with UNK
        candidates.append(space)
    return next((token_id for token_id in candidates if token_id is not None), None)


def token_nll(model, input_ids: torch.LongTensor, start_token_id: int | None) -> torch.Tensor:
    """−log p(x_t | x_<t) in nats, float32, (B, T) → (B, T), each block preceded by `start_token_id`; without
    one the first token has no context and only T − 1 tokens are scored, (B, T − 1).

    `model` may be wrapped for data parallelism (hence the start token as an argument); blocks are never padded.
    """
    if start_token_id is not None:
        input_ids = torch.cat([torch.full_like(input_ids[:, :1], start_token_id), input_ids], dim=1)
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[:, :-1]
    return F.cross_entropy(logits.float().transpose(1, 2), input_ids[:, 1:], reduction="none")


@torch.no_grad()
def samples(model, start_token_id: int, num_samples: int, length: int, *, stop_at_eos: bool = True,
            **sampling) -> torch.LongTensor:
    """Ancestral samples (num_samples, ≤ length) after the start token, no top-k; `sampling` holds further
    `GenerationConfig` fields (``temperature``, ``top_p``).

    With ``stop_at_eos=False`` an EOS does not end a sample, so every sample has exactly `length` tokens, like the
    1024-token samples of MDLM/ReMDM; otherwise generation stops at the model's EOS and pads with the start token.
    """
    stopping = {} if stop_at_eos else {"min_new_tokens": 0, "eos_token_id": None}
    settings = GenerationConfig(do_sample=True, max_new_tokens=length, top_k=None, pad_token_id=start_token_id,
                                **stopping, **sampling)
    start = torch.full((num_samples, 1), start_token_id, dtype=torch.long, device=model.device)
    return model.generate(input_ids=start, attention_mask=torch.ones_like(start), generation_config=settings)[:, 1:]
