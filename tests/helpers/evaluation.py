"""Tiny, offline stand-ins for the evaluation tests: a 27-symbol character tokenizer, a fake latent model with the
TarFlowLM forward fields, tiny GPT-2 causal LMs, and texts from the shipped corpus ``data/tiny-literary``."""

import math
import random
from types import SimpleNamespace

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from transformers.utils import ModelOutput

from training.data import load_openwebtext
from training.tokenization_char import build_char_tokenizer

EOS = "<eos>"
WORDS_PER_TEXT, WORDS_PER_SOURCE = 50, 4000


def char_tokenizer(with_eos: bool = False) -> PreTrainedTokenizerFast:
    """The package's 27-symbol text8 tokenizer (a-z = 0..25, space = 26), optionally with an EOS token (id 27)."""
    tokenizer = build_char_tokenizer()
    if with_eos:
        tokenizer.add_special_tokens({"eos_token": EOS})
    return tokenizer


class NoisyUniformLatentModel(torch.nn.Module):
    """A latent model with the TarFlowLM forward fields whose exact likelihood is uniform, p(x) = V^−T.

    Its importance weights are log w = log p(x, z)/q(z|x) = log p(x) + σ·g − σ²/2 with g ~ N(0, 1), so E[w] = p(x):
    the ELBO is T·log V + σ²/2 nats and the importance-weighted bound falls towards T·log V as K grows.
    With σ = 0 every bound equals T·log V exactly.
    """

    def __init__(self, vocab_size: int = 27, noise_std: float = 0.0, max_length: int = 64):
        super().__init__()
        self.noise_std = noise_std
        self.config = SimpleNamespace(model_type="tarflow", vocab_size=vocab_size, patch_size=1,
                                      max_position_embeddings=max_length)
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, output_u=True):
        batch, length = input_ids.shape
        log_p_x = torch.full((batch,), -length * math.log(self.config.vocab_size), dtype=torch.float64)
        log_weight = log_p_x + self.noise_std * torch.randn(batch, dtype=torch.float64) - self.noise_std**2 / 2
        log_q_z = torch.zeros_like(log_p_x)
        nelbo = -log_weight
        return ModelOutput(loss=nelbo.mean() / length, nelbo=nelbo, log_p_x_given_z=log_weight,
                           log_p_z=torch.zeros_like(log_p_x), log_q_z=log_q_z)

    def generate(self, max_new_tokens, num_return_sequences=1, do_sample=True, temperature=1.0,
                 noise_temperature=None):
        return torch.randint(self.config.vocab_size, (num_return_sequences, max_new_tokens))


def tiny_gpt2(vocab_size: int = 27, context: int = 64, seed: int = 0, init_std: float = 0.02,
              bos_token_id: int | None = None) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 with ``init_std`` weights (larger std = more peaked next-token distributions), in eval mode."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=32, n_layer=2, n_head=2,
                        initializer_range=init_std, bos_token_id=bos_token_id, eos_token_id=bos_token_id)
    return GPT2LMHeadModel(config).eval()


def uniform_gpt2(vocab_size: int = 27, context: int = 64) -> GPT2LMHeadModel:
    """A GPT-2 whose logits are all zero (a zero LM head), so p(x_t | x_<t) = 1/V exactly."""
    model = tiny_gpt2(vocab_size, context)
    torch.nn.init.zeros_(model.lm_head.weight)  # tied to the token embedding: zero both
    return model


def save_causal_lm(model, tokenizer, folder) -> str:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def corpus_texts() -> tuple[list[str], list[str], list[str]]:
    """Two interleaved halves of 50-word texts from the shipped corpus's validation split (KJV, Shakespeare, Jargon
    File; at most 4,000 words of each), and as many texts of the same words shuffled across the whole set."""
    words_by_source = {}
    for document in load_openwebtext("tiny-literary", "validation"):
        words_by_source.setdefault(document["source"], []).extend(document["text"].split())
    texts = []
    for words in words_by_source.values():
        words = words[:WORDS_PER_SOURCE]
        texts += [" ".join(words[i : i + WORDS_PER_TEXT]) for i in range(0, len(words), WORDS_PER_TEXT)]
    words = " ".join(texts).split()
    random.Random(0).shuffle(words)
    shuffled = [" ".join(words[i : i + WORDS_PER_TEXT]) for i in range(0, len(words) // 2, WORDS_PER_TEXT)]
    return texts[0::2], texts[1::2], shuffled
