"""Likelihood evaluation (paper Table 2): corpus NELBO and importance-weighted bounds → BPC (text8) or PPL (OWT).

    python -m evaluation.likelihood MODEL --data text8 [--split test --num_z_samples 64 --iw_k 1 8 64]

A latent model (TarFlowLM) is scored by S draws z ~ q(z|x) per block (one forward pass per draw); the bounds and
their token-weighted aggregation are in ``evaluation.bounds``. A causal-LM baseline is scored by its exact NLL. The
text is cut into non-overlapping blocks of ``--block_size`` tokens by the training data layer
(``evaluation.corpus``).
"""

import argparse
import math
import sys

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .bounds import CorpusBound, importance_weighted_nll
from .cli import DTYPES, add_common_arguments, default_output_path, print_config
from .corpus import Blocks, default_split, load_blocks
from .loading import LoadedModel, load_evaluated_model
from .records import run_header, write_json
from .sampling import causal_lm_start_token

CHARACTER_VOCAB_LIMIT = 256  # vocabularies this small are character-level: report BPC, not PPL


@torch.no_grad()
def latent_nelbo_samples(model, blocks: torch.Tensor, num_samples: int) -> torch.Tensor:
    """NELBO (nats per block) for ``num_samples`` independent z ~ q(z|x): (B, T) → (B, S), one forward per draw."""
    return torch.stack([model(input_ids=blocks).nelbo.double() for _ in range(num_samples)], dim=1)


@torch.no_grad()
def autoregressive_nll(model, blocks: torch.Tensor, start_token_id: int | None) -> torch.Tensor:
    """Exact −log p(x) = −Σ_t log p(x_t | x_<t) per block (nats), (B, T) → (B,).

    With a start token (BOS) every token of the block is scored; without one the first token has no context and
    only T − 1 tokens are scored (see ``scored_tokens_per_block``).
    """
    if start_token_id is not None:
        blocks = torch.cat([torch.full_like(blocks[:, :1], start_token_id), blocks], dim=1)
    logits = model(input_ids=blocks).logits[:, :-1].float()
    return F.cross_entropy(logits.transpose(1, 2), blocks[:, 1:], reduction="none").double().sum(dim=1)


def scored_tokens_per_block(block_size: int, latent: bool, start_token_id: int | None) -> int:
    return block_size if latent or start_token_id is not None else block_size - 1


def score_blocks(loaded: LoadedModel, blocks: Blocks, batch_size: int, num_z_samples: int,
                 start_token_id: int | None, scored_tokens: int, device) -> torch.Tensor:
    """Per-block NELBO samples (N, S) for a latent model, or the exact NLL as (N, 1) for a causal LM."""
    per_block, running_nats = [], 0.0
    num_batches = -(-len(blocks) // batch_size)
    progress = tqdm(blocks.batches(batch_size), desc="scoring blocks", unit="batch", total=num_batches)
    for batch in progress:
        batch = batch.to(device)
        if loaded.is_latent:
            scores = latent_nelbo_samples(loaded.model, batch, num_z_samples).cpu()
        else:
            scores = autoregressive_nll(loaded.model, batch, start_token_id).cpu()[:, None]
        per_block.append(scores)
        running_nats += scores.mean(dim=1).sum().item()
        running_tokens = sum(len(s) for s in per_block) * scored_tokens
        progress.set_postfix(bits_per_token=f"{running_nats / running_tokens / math.log(2):.4f}")
    return torch.cat(per_block)


def corpus_bounds(per_block: torch.Tensor, latent: bool, iw_ks: list[int], scored_tokens: int) -> dict:
    """Token-weighted corpus bounds: ``elbo`` and ``iw_k<K>`` for a latent model, ``exact`` for a causal LM."""
    tokens = per_block.shape[0] * scored_tokens
    if not latent:
        return {"exact": CorpusBound(per_block.sum().item(), tokens).to_dict()}
    return {("elbo" if k == 1 else f"iw_k{k}"): CorpusBound(importance_weighted_nll(per_block, k).sum().item(),
                                                            tokens).to_dict() for k in iw_ks}


def headline(bounds: dict, metric: str) -> dict:
    """The number a table shows: the ELBO bound (paper Table 2 reports NELBO bounds) or the exact NLL."""
    name = "exact" if "exact" in bounds else "elbo" if "elbo" in bounds else min(bounds, key=lambda b: int(b[4:]))
    value = bounds[name]["bits_per_token"] if metric == "bpc" else bounds[name]["perplexity"]
    return {"metric": metric, "bound": name, "value": value, "is_upper_bound": name != "exact"}


def default_block_size(loaded: LoadedModel, start_token_id: int | None) -> int:
    """The model's context: ``max_position_embeddings`` (or GPT-2's ``n_positions``), less one for a BOS."""
    config = loaded.model.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions")
    return context - (0 if loaded.is_latent or start_token_id is None else 1)


def check_block_size(loaded: LoadedModel, block_size: int) -> None:
    config = loaded.model.config
    patch_size = getattr(config, "patch_size", 1) if loaded.is_latent else 1
    if block_size % patch_size:
        raise ValueError(f"--block_size {block_size} is not a multiple of the model's patch_size {patch_size}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.likelihood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--data", required=True, help="corpus, as training.data reads it: 'tiny-literary' "
                        "(shipped), 'text8', 'openwebtext', a Hub id, a folder of train/valid/test files, or one "
                        "file split 90/5/5")
    parser.add_argument("--split", default=None, help="split to score (default: test for character models, as "
                        "text8 in Table 2; validation otherwise, as OpenWebText)")
    parser.add_argument("--block_size", type=int, default=None, help="tokens per non-overlapping block (default: "
                        "the model's context; text8 uses 256, OpenWebText 1024)")
    parser.add_argument("--max_blocks", type=int, default=None, help="score only N blocks, evenly spaced over the "
                        "split (quick runs)")
    parser.add_argument("--num_z_samples", type=int, default=1, help="z ~ q(z|x) draws per block (latent models); "
                        "every K in --iw_k must divide it")
    parser.add_argument("--iw_k", type=int, nargs="+", default=[1], help="importance-weighted bounds to report, "
                        "e.g. 1 8 64 with --num_z_samples 64; K = 1 is the ELBO")
    parser.add_argument("--metric", choices=["auto", "bpc", "ppl"], default="auto", help="headline unit: bits per "
                        f"token (= BPC for character models) or perplexity; auto = bpc when the vocabulary has at "
                        f"most {CHARACTER_VOCAB_LIMIT} symbols")
    parser.add_argument("--no_start_token", action="store_true", help="causal LM: do not condition the first token "
                        "of a block on BOS (then only T - 1 tokens per block are scored)")
    return parser


def resolve_config(args, loaded: LoadedModel) -> dict:
    """The run's settings with every default made concrete, validated against the model."""
    bos = None if loaded.is_latent else causal_lm_start_token(loaded.tokenizer, loaded.model)
    start_token_id = None if args.no_start_token else bos
    block_size = args.block_size or default_block_size(loaded, start_token_id)
    check_block_size(loaded, block_size)
    bad_ks = [k for k in args.iw_k if k < 1 or args.num_z_samples % k]
    if loaded.is_latent and bad_ks:
        raise ValueError(f"--iw_k {bad_ks} must divide --num_z_samples {args.num_z_samples}")
    metric = args.metric
    if metric == "auto":
        metric = "bpc" if loaded.model.config.vocab_size <= CHARACTER_VOCAB_LIMIT else "ppl"
    return {**vars(args), "split": args.split or default_split(loaded.tokenizer), "block_size": block_size,
            "metric": metric, "start_token_id": start_token_id,
            "iw_k": sorted(set(args.iw_k)) if loaded.is_latent else [],
            "num_z_samples": args.num_z_samples if loaded.is_latent else None}


def protocol_notes(loaded: LoadedModel, config: dict) -> list[str]:
    """How this run departs from, or pins down, the protocols the paper's numbers follow."""
    notes = ["blocks are non-overlapping slices of the split's token stream as training.data cuts them (documents "
             "each followed by EOS); the final partial block is dropped (see counts.dropped_tokens)"]
    if loaded.is_latent:
        notes.append(f"{config['num_z_samples']} z draw(s) per block, one forward pass each, torch global RNG "
                     f"seeded with {config['seed']}; bounds are upper bounds on -log p(x)")
    elif config["start_token_id"] is None:
        notes.append("causal LM without a start token: the first token of each block is not scored")
    else:
        notes.append(f"causal LM: each block is preceded by BOS (id {config['start_token_id']}), all tokens scored")
    return notes


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    loaded = load_evaluated_model(args.model, args.device, DTYPES[args.dtype])
    config = resolve_config(args, loaded)
    config["output"] = config["output"] or default_output_path("likelihood", loaded.label, args.data,
                                                               config["split"])
    print_config("likelihood", config)
    blocks = load_blocks(args.data, config["split"], loaded.tokenizer, config["block_size"], args.max_blocks)
    scored = scored_tokens_per_block(blocks.block_size, loaded.is_latent, config["start_token_id"])
    torch.manual_seed(args.seed)  # after loading, so that the z draws depend on the seed alone
    per_block = score_blocks(loaded, blocks, args.batch_size, config["num_z_samples"] or 1,
                             config["start_token_id"], scored, args.device)
    bounds = corpus_bounds(per_block, loaded.is_latent, config["iw_k"], scored)
    record = {**run_header("likelihood", argv, config), "model": loaded.describe(),
              "data": {"source": args.data, "split": config["split"]},
              "counts": {**blocks.counts(), "scored_tokens": per_block.shape[0] * scored},
              "bounds": bounds, "headline": headline(bounds, config["metric"]),
              "protocol_notes": protocol_notes(loaded, config)}
    write_json(record, config["output"])
    print(summary_line(record), flush=True)
    return record


def summary_line(record: dict) -> str:
    top = record["headline"]
    bounds = ", ".join(f"{name} {b['bits_per_token']:.4f} bits/token (PPL {b['perplexity']:.2f})"
                       for name, b in record["bounds"].items())
    data = record["data"]
    value = f"{top['value']:.4f}" if top["metric"] == "bpc" else f"{top['value']:.2f}"
    return (f"{record['model']['label']} on {data['source']} {data['split']}: {top['metric'].upper()} "
            f"{'≤ ' if top['is_upper_bound'] else '= '}{value} [{bounds}] over "
            f"{record['counts']['scored_tokens']} tokens -> {record['config']['output']}")


if __name__ == "__main__":
    main()
