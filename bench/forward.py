"""Training-step and inversion throughput of TarFlowLM against a GPT-2 of the same depth and width.

The char-level config replaces GPT-2's 12 transformer layers one for one by 3 flow layers (Mix-d + 2×Mix-1,
4 transformer layers each), width 256, V = 27, d = 5, P = 1, 256-token sequences. Both models are timed in the same
process, interleaved, so background load hits both alike.

    python -m bench.forward [--batch_size 16] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bench.environment import median_seconds, write_result
from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM

FLOW_LAYERS = [
    {"coupling": "mixture_rosenblatt", "num_layers": 4},
    {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 4},
    {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 4},
]


def build_models(width: int, heads: int, length: int, device: str):
    tarflow_config = TarFlowConfig(vocab_size=27, latent_dim=5, patch_size=1, hidden_size=width,
                                   num_attention_heads=heads, max_position_embeddings=length, flow_layers=FLOW_LAYERS)
    tarflow = TarFlowForCausalFlowLM(tarflow_config).to(device)
    return tarflow, gpt2_like(tarflow_config).to(device)


def gpt2_like(config: TarFlowConfig) -> GPT2LMHeadModel:
    """The GPT-2 with a TarFlowLM's transformer (depth = all its flow layers' transformer layers, width, heads,
    context) and a V-way softmax head over its vocabulary; no dropout, token 0 as start and end."""
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_position_embeddings, n_embd=config.hidden_size,
        n_layer=config.num_transformer_layers, n_head=config.num_attention_heads, n_inner=config.intermediate_size,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0))


def training_step(model, loss_fn):
    def step():
        model.zero_grad(set_to_none=True)
        loss_fn().backward()
    return step


def measure(args) -> dict:
    torch.manual_seed(0)
    tarflow, gpt2 = build_models(args.width, args.heads, args.length, args.device)
    ids = torch.randint(0, 27, (args.batch_size, args.length), device=args.device)
    steps = {
        "tarflow": training_step(tarflow, lambda: tarflow(ids).loss),
        "gpt2": training_step(gpt2, lambda: gpt2(ids, labels=ids).loss),
    }
    times = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleaved rounds
        for name, step in steps.items():
            times[name].append(median_seconds(step, repeats=1, warmup=1 if not times[name] else 0)[0])
    tokens = args.batch_size * args.length
    # Best-of-N: on a shared CPU, contention only ever slows a step down, so the fastest step is the cleanest
    # estimate of each model's own cost; the median is kept beside it.
    train = {name: {"tokens_per_second": tokens / min(t), "tokens_per_second_median": tokens / statistics.median(t),
                    "seconds": t} for name, t in times.items()}
    train["ratio_tarflow_over_gpt2"] = train["tarflow"]["tokens_per_second"] / train["gpt2"]["tokens_per_second"]
    tarflow.eval()
    sample_seconds, _ = median_seconds(
        lambda: tarflow.generate(max_new_tokens=args.length, num_return_sequences=args.sample_batch_size, seed=0),
        repeats=1, warmup=0)
    sampling = {"batch_size": args.sample_batch_size, "length": args.length,
                "tokens_per_second": args.sample_batch_size * args.length / sample_seconds,
                "seconds": sample_seconds, "decoding": "sequential (exact), KV cache"}
    return {"training_step": train, "sampling": sampling,
            "parameters": {"tarflow": tarflow.num_parameters(), "gpt2": gpt2.num_parameters()},
            "config": {**vars(args), "flow_layers": FLOW_LAYERS, "transformer_layers": 12}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per training step")
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence (text8 chunk length)")
    parser.add_argument("--width", type=int, default=256, help="transformer width of both models")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of both models")
    parser.add_argument("--repeats", type=int, default=7, help="timed training steps per model (best and median kept)")
    parser.add_argument("--sample_batch_size", type=int, default=16, help="sequences sampled in the inversion timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--output", default="forward", help="name of the JSON file in bench/results/")
    args = parser.parse_args()
    result = measure(args)
    path = write_result(args.output, result)
    train = result["training_step"]
    print(f"training tokens/s: TarFlowLM {train['tarflow']['tokens_per_second']:.0f}, "
          f"GPT-2 {train['gpt2']['tokens_per_second']:.0f} (ratio {train['ratio_tarflow_over_gpt2']:.2f}); "
          f"sampling {result['sampling']['tokens_per_second']:.0f} tokens/s -> {path}")


if __name__ == "__main__":
    main()
