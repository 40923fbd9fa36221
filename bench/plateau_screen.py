"""Where the early plateau near 3.35 bits per character comes from: short in-process runs at a wall-clock budget,
each changing one suspect, appended to ``bench/results/plateau_screen.json`` (config, curve, trained σ).

The loop is deliberately bare (AdamW, warmup + cosine over the budget, clipping at 1, no EMA, the same data and
validation blocks for every run) so that only the named change differs between two runs; the training script's own
runs are in ``bench/likelihood_study.py``.

    python -m bench.plateau_screen --model gpt2 --num_layers 4 --tag gpt2-4l
    python -m bench.plateau_screen --num_layers 4 --mixd_head zero --tag mixd-4l-zero-head
    python -m bench.plateau_screen --num_layers 4 --sigma_init 0.1 --codebook_lr 0.01 --tag mixd-4l-sigma
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from bench.environment import RESULTS_DIR, describe_environment
from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM
from training.recipes import baseline_block_nll, build_baseline
from training.data import DataConfig, build_datasets

RESULT_FILE = RESULTS_DIR / "plateau_screen.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--tag", required=True, help="name of the run in the results file")
    add("--model", default="tarflow", choices=["tarflow", "gpt2"], help="a lone tied Mix-d layer, or GPT-2")
    add("--num_layers", type=int, default=4, help="transformer layers (of the Mix-d layer, or of GPT-2)")
    add("--hidden_size", type=int, default=128)
    add("--batch_size", type=int, default=8)
    add("--block_size", type=int, default=128)
    add("--learning_rate", type=float, default=3e-3)
    add("--warmup_steps", type=int, default=20)
    add("--budget_seconds", type=float, default=120.0, help="training wall-clock (validation excluded)")
    add("--eval_every_seconds", type=float, default=15.0)
    add("--dataset", default="tiny-literary")
    add("--seed", type=int, default=0)
    add("--latent_dim", type=int, default=5)
    add("--sigma_init", type=float, default=0.5, help="codebook_init_sigma")
    add("--codebook_lr", type=float, default=None, help="own learning rate for μ and log σ (default: the same)")
    add("--mixd_head", choices=["lm", "zero"], default="lm", help="Mix-d head weights drawn like an LM head, or 0")
    add("--position_std", type=float, default=0.01, help="std of the conditioner's position embeddings")
    add("--input", choices=["linear", "posterior"], default="linear",
        help="conditioner input: proj_in(z), or a linear map of the decoder posterior p(x|z) (a soft lookup)")
    add("--untied_lm_head", action="store_true", help="GPT-2: untie the LM head from the input embeddings")
    return parser.parse_args(argv)


class PosteriorEmbedding(torch.nn.Module):
    """e_t = W p(x | z_t) + b: the tied decoder's posterior as the conditioner's input (σ → 0: a lookup table)."""

    def __init__(self, codebook, hidden_size: int):
        super().__init__()
        self._codebook = (codebook,)  # not a submodule: the encoder owns it
        self.linear = torch.nn.Linear(codebook.num_components, hidden_size)
        torch.nn.init.normal_(self.linear.weight, std=0.02)
        torch.nn.init.zeros_(self.linear.bias)

    @property
    def weight(self) -> torch.Tensor:  # what the inversion code reads the working dtype from
        return self.linear.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.softmax(self._codebook[0].log_prob(h), dim=-1))


def build_model(args, tokenizer):
    """The model and its per-block NLL function: −log p for GPT-2, the NELBO for TarFlowLM."""
    config = TarFlowConfig(vocab_size=27, latent_dim=args.latent_dim, hidden_size=args.hidden_size,
                           num_attention_heads=4, max_position_embeddings=args.block_size,
                           flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": args.num_layers}],
                           codebook_init_sigma=args.sigma_init)
    if args.model == "gpt2":
        model = build_baseline(config, tokenizer)
        if args.untied_lm_head:
            model.lm_head.weight = torch.nn.Parameter(model.transformer.wte.weight.detach().clone())
        start = model.config.bos_token_id
        return model, lambda ids: baseline_block_nll(model, ids, start)
    model = TarFlowForCausalFlowLM(config)
    layer = model.flow.layers[0]
    with torch.no_grad():
        if args.mixd_head == "zero":
            layer.coupling.head.weight.zero_()
        layer.conditioner.position.normal_(0.0, args.position_std)
    if args.input == "posterior":
        layer.conditioner.proj_in = PosteriorEmbedding(model.codebook, args.hidden_size)
    return model, lambda ids: model(ids).nelbo


def build_optimizer(model, args) -> torch.optim.AdamW:
    codebook = [p for n, p in model.named_parameters() if n.startswith("codebook.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("codebook.")]
    groups = [{"params": rest}] + ([{"params": codebook, "lr": args.codebook_lr or args.learning_rate}]
                                   if codebook else [])
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)
    for group in optimizer.param_groups:
        group["peak_lr"] = group["lr"]
    return optimizer


@torch.no_grad()
def validation_bpc(model, nll, blocks: torch.Tensor) -> float:
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(1234)  # the same z noise at every evaluation
        nats = sum(nll(blocks[i:i + 16]).sum().item() for i in range(0, len(blocks), 16))
    model.train()
    return nats / blocks.numel() / math.log(2)


def train(args) -> dict:
    torch.manual_seed(args.seed)
    splits, tokenizer = build_datasets(DataConfig(dataset=args.dataset, block_size=args.block_size,
                                                  max_eval_blocks=48))
    model, nll = build_model(args, tokenizer)
    optimizer = build_optimizer(model, args)
    loader = torch.utils.data.DataLoader(splits["train"], batch_size=args.batch_size, shuffle=True, drop_last=True)
    blocks = torch.stack([item["input_ids"] for item in splits["validation"]])
    curve, step, seconds, batches = [], 0, 0.0, iter(loader)
    while True:
        if seconds >= len(curve) * args.eval_every_seconds or seconds >= args.budget_seconds:
            curve.append({"seconds": round(seconds, 1), "step": step, "bpc": validation_bpc(model, nll, blocks)})
            print(curve[-1], flush=True)
            if seconds >= args.budget_seconds:
                break
        started = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        factor = min(1.0, (step + 1) / args.warmup_steps) * (0.1 + 0.45 * (1 + math.cos(math.pi * seconds
                                                                                        / args.budget_seconds)))
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor
        loss = nll(batch["input_ids"]).mean() / args.block_size
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step, seconds = step + 1, seconds + time.perf_counter() - started
    return {"curve": curve, **codebook_summary(model)}


def codebook_summary(model) -> dict:
    """Trained σ and how far apart the means are (the decoder is sharp when σ ≪ nearest-neighbour distance)."""
    if not hasattr(model, "codebook"):
        return {}
    sigma = model.codebook.log_sigma.detach().exp()
    distance = torch.cdist(model.codebook.mu.detach(), model.codebook.mu.detach())
    distance.fill_diagonal_(float("inf"))
    return {"sigma_median": sigma.median().item(), "nearest_mean_distance_median":
            distance.min(-1).values.median().item()}


def append(record: dict) -> None:
    data = json.loads(RESULT_FILE.read_text()) if RESULT_FILE.exists() else {"runs": []}
    data["runs"] = [r for r in data["runs"] if r["tag"] != record["tag"]] + [record]
    data["environment"] = describe_environment()
    RESULT_FILE.write_text(json.dumps(data, indent=1) + "\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    result = train(args)
    append({"tag": args.tag, "settings": vars(args), **result, "final_bpc": result["curve"][-1]["bpc"]})
    print(f"{args.tag}: {result['curve'][-1]} -> {RESULT_FILE}")


if __name__ == "__main__":
    main()
