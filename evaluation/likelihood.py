"""Likelihood evaluation (paper Table 2): corpus NELBO and importance-weighted bounds → BPC (text8) or PPL (OWT).

    python -m evaluation.likelihood MODEL --data tiny-literary                  # quick: 128 blocks, 8 z draws
    python -m evaluation.likelihood MODEL --data text8 --protocol paper         # the whole test split, 64 draws

A latent model (TarFlowLM) is scored by S draws z ~ q(z|x) per block (one forward pass per draw); the bounds, their
token-weighted aggregation and their standard errors are in ``evaluation.bounds``. A causal-LM baseline is scored by
its exact NLL. The text is cut into non-overlapping blocks of ``--block_size`` tokens by the training data layer
(``evaluation.corpus``).
"""

import sys
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from training.tokenization_char import is_character_tokenizer

from . import causal_lm
from .bounds import CorpusBound, bits, importance_weighted_estimates
from .cli import (EvaluationArguments, SettingsError, default_output_path, parse_arguments, print_config,
                  require_at_least, run_command)
from .corpus import Blocks, default_split, load_blocks
from .loading import LoadedModel, load_evaluated_model
from .records import run_header, write_json

# Settings each --protocol gives to the flags left unset. The paper does not state its number of z draws;
# 64 draws give the ELBO and the importance-weighted bounds K = 8, 64 from the same forward passes.
PROTOCOLS = {
    "quick": {"max_blocks": 128, "num_z_samples": 8, "iw_k": [1, 8]},
    "paper": {"max_blocks": None, "num_z_samples": 64, "iw_k": [1, 8, 64]},
}


@dataclass(kw_only=True)
class LikelihoodArguments(EvaluationArguments):
    """The flags of ``python -m evaluation.likelihood``; None means "the protocol's (or the model's) value"."""

    data: str = field(metadata={"help": "corpus, as training.data reads it: 'tiny-literary' (shipped), 'text8', "
                      "'openwebtext', a Hub id, a folder of train/valid/test files, or one file split 90/5/5"})
    split: str | None = field(default=None, metadata={"help": "split to score (default: test for character "
                              "models, as text8 in Table 2; validation otherwise, as OpenWebText)"})
    block_size: int | None = field(default=None, metadata={"help": "tokens per non-overlapping block (default: "
                                   "the model's context; text8 uses 256, OpenWebText 1024)"})
    max_blocks: int | None = field(default=None, metadata={"help": "score N blocks, evenly spaced over the split "
                                   "(quick: 128; paper: every block)"})
    num_z_samples: int | None = field(default=None, metadata={"help": "z ~ q(z|x) draws per block, latent models "
                                      "(quick: 8; paper: 64); every K in --iw_k must divide it"})
    iw_k: list[int] | None = field(default=None, metadata={"help": "importance-weighted bounds to report, K = 1 "
                                   "being the ELBO (quick: 1 8; paper: 1 8 64)"})
    metric: str = field(default="auto", metadata={"choices": ("auto", "bpc", "ppl"), "help": "headline unit: bits "
                        "per token (= BPC for character models) or perplexity; auto = bpc for a character model "
                        "(its tokenizer is the 27-symbol text8 alphabet)"})
    no_start_token: bool = field(default=False, metadata={"help": "causal LM: do not condition the first token of "
                                 "a block on BOS (then only T - 1 tokens per block are scored)"})

    def __post_init__(self):
        super().__post_init__()
        for name in ("block_size", "max_blocks", "num_z_samples"):
            require_at_least(self, name, 1)
        for k in self.iw_k or []:
            if k < 1:
                raise SettingsError(f"--iw_k {k}: every K must be >= 1 (K = 1 is the ELBO)")


@dataclass(kw_only=True)
class LikelihoodRun(LikelihoodArguments):
    """One run's settings with every default made concrete, validated against the model: the JSON's ``config``."""

    model: str = field(metadata={"help": "the evaluated model, as given"})
    start_token_id: int | None = field(default=None, metadata={"help": "causal LM: the id before every block"})


@torch.no_grad()
def latent_nelbo_samples(model, blocks: torch.Tensor, num_samples: int, progress=None) -> torch.Tensor:
    """NELBO (nats per block) for ``num_samples`` independent z ~ q(z|x): (B, T) → (B, S), one forward per draw;
    ``progress`` (a tqdm bar counting block-draws) advances by B after each draw."""
    draws = []
    for _ in range(num_samples):
        draws.append(model(input_ids=blocks, output_u=False).nelbo.double())
        if progress is not None:
            progress.update(len(blocks))
    return torch.stack(draws, dim=1)


@torch.no_grad()
def autoregressive_nll(model, blocks: torch.Tensor, start_token_id: int | None) -> torch.Tensor:
    """Exact −log p(x) = −Σ_t log p(x_t | x_<t) per block (nats, summed in float64), (B, T) → (B,); without a start
    token only T − 1 tokens are scored (see ``scored_tokens_per_block``)."""
    return causal_lm.token_nll(model, blocks, start_token_id).double().sum(dim=1)


def scored_tokens_per_block(block_size: int, latent: bool, start_token_id: int | None) -> int:
    return block_size if latent or start_token_id is not None else block_size - 1


def score_blocks(loaded: LoadedModel, blocks: Blocks, run: LikelihoodRun, scored_tokens: int) -> torch.Tensor:
    """Per-block NELBO samples (N, S) for a latent model, or the exact NLL as (N, 1) for a causal LM, with a
    progress bar (ETA included) over every block and z draw."""
    draws = run.num_z_samples or 1
    progress = tqdm(total=len(blocks) * draws, unit="block" if draws == 1 else "draw",
                    desc="scoring blocks" if draws == 1 else f"scoring blocks x {draws} z draws")
    per_block, running_nats = [], 0.0
    for batch in blocks.batches(run.batch_size):
        batch = batch.to(run.device)
        if loaded.is_latent:
            scores = latent_nelbo_samples(loaded.model, batch, draws, progress).cpu()
        else:
            scores = autoregressive_nll(loaded.model, batch, run.start_token_id).cpu()[:, None]
            progress.update(len(batch))
        per_block.append(scores)
        running_nats += scores.mean(dim=1).sum().item()
        running_tokens = sum(len(s) for s in per_block) * scored_tokens
        progress.set_postfix(bits_per_token=f"{bits(running_nats / running_tokens):.4f}")
    progress.close()
    return torch.cat(per_block)


def corpus_bounds(per_block: torch.Tensor, latent: bool, iw_ks: list[int], scored_tokens: int) -> dict:
    """Token-weighted corpus bounds with standard errors: ``elbo`` and ``iw_k<K>`` for a latent model, ``exact``
    for a causal LM."""
    if not latent:
        return {"exact": CorpusBound.from_estimates(per_block, scored_tokens).to_dict()}
    return {("elbo" if k == 1 else f"iw_k{k}"):
            CorpusBound.from_estimates(importance_weighted_estimates(per_block, k), scored_tokens).to_dict()
            for k in iw_ks}


def headline(bounds: dict, metric: str) -> dict:
    """The number a table shows: the ELBO bound (paper Table 2 reports NELBO bounds) or the exact NLL."""
    name = "exact" if "exact" in bounds else "elbo" if "elbo" in bounds else min(bounds, key=lambda b: int(b[4:]))
    unit = "bits_per_token" if metric == "bpc" else "perplexity"
    error = bounds[name].get("standard_error")
    return {"metric": metric, "bound": name, "value": bounds[name][unit], "is_upper_bound": name != "exact",
            "standard_error": error[unit] if error else None}


def model_context(loaded: LoadedModel, start_token_id: int | None) -> int:
    """Tokens a block may hold: ``max_position_embeddings`` (or GPT-2's ``n_positions``), less one for a BOS."""
    config = loaded.model.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions")
    return context - (0 if loaded.is_latent or start_token_id is None else 1)


def check_block_size(loaded: LoadedModel, block_size: int, context: int) -> None:
    if block_size > context:
        raise SettingsError(f"--block_size {block_size}: must be <= {context}, the model's context in tokens")
    patch_size = getattr(loaded.model.config, "patch_size", 1) if loaded.is_latent else 1
    if block_size % patch_size:
        raise SettingsError(f"--block_size {block_size}: must be a multiple of the model's patch_size {patch_size}")


def resolve_draws(settings: LikelihoodArguments, latent: bool) -> dict:
    """Blocks, z draws and IW bounds: the flags given, else the protocol's (its Ks that divide the draws)."""
    preset = PROTOCOLS[settings.protocol]
    max_blocks = settings.max_blocks if settings.max_blocks is not None else preset["max_blocks"]
    if not latent:  # a causal LM's NLL is exact: no draws, no IW bounds
        return {"max_blocks": max_blocks, "num_z_samples": None, "iw_k": []}
    draws = settings.num_z_samples or preset["num_z_samples"]
    iw_k = sorted(set(settings.iw_k)) if settings.iw_k else [k for k in preset["iw_k"] if draws % k == 0]
    bad = [k for k in iw_k if draws % k]
    if bad:
        raise SettingsError(f"--iw_k {' '.join(map(str, bad))}: every K must divide --num_z_samples {draws}")
    return {"max_blocks": max_blocks, "num_z_samples": draws, "iw_k": iw_k}


def resolve_run(model: str, settings: LikelihoodArguments, loaded: LoadedModel) -> LikelihoodRun:
    """The run's settings with every default made concrete (what the JSON records), validated against the model."""
    bos = None if loaded.is_latent else causal_lm.start_token_id(loaded.tokenizer, loaded.model.config)
    start_token_id = None if settings.no_start_token else bos
    context = model_context(loaded, start_token_id)
    block_size = settings.block_size or context
    check_block_size(loaded, block_size, context)
    metric = settings.metric
    if metric == "auto":
        metric = "bpc" if is_character_tokenizer(loaded.tokenizer) else "ppl"
    split = settings.split or default_split(loaded.tokenizer)
    output = settings.output or default_output_path("likelihood", loaded.label, settings.data, split)
    return LikelihoodRun(**{**asdict(settings), "split": split, "block_size": block_size, "metric": metric,
                            "output": output, **resolve_draws(settings, loaded.is_latent)},
                         model=model, start_token_id=start_token_id)


def protocol_notes(loaded: LoadedModel, run: LikelihoodRun, counts: dict) -> list[str]:
    """How this run departs from, or pins down, the protocols the paper's numbers follow."""
    notes = ["blocks are non-overlapping slices of the split's token stream as training.data cuts them (documents "
             "each followed by EOS); the final partial block is dropped (see counts.dropped_tokens)"]
    if counts["blocks"] < counts["blocks_in_split"]:
        notes.append(f"{run.protocol} protocol: {counts['blocks']} of the split's {counts['blocks_in_split']} "
                     "blocks, evenly spaced; --protocol paper scores them all")
    if loaded.is_latent:
        notes.append(f"{run.num_z_samples} z draw(s) per block, one forward pass each, torch global RNG "
                     f"seeded with {run.seed}; bounds are upper bounds on -log p(x)")
    elif run.start_token_id is None:
        notes.append("causal LM without a start token: the first token of each block is not scored")
    else:
        notes.append(f"causal LM: each block is preceded by BOS (id {run.start_token_id}), all tokens scored")
    notes.append("standard_error: spread of the per-block bound across blocks / sqrt(blocks), z-draw noise included; "
                 "draw_standard_error: the z-draw noise alone")
    return notes


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    model, settings = parse_arguments(LikelihoodArguments, argv, "python -m evaluation.likelihood", __doc__)
    loaded = load_evaluated_model(model, settings.device, settings.torch_dtype, settings.trust_remote_code)
    run = resolve_run(model, settings, loaded)
    print_config("likelihood", asdict(run))
    blocks = load_blocks(run.data, run.split, loaded.tokenizer, run.block_size, run.max_blocks)
    scored = scored_tokens_per_block(blocks.block_size, loaded.is_latent, run.start_token_id)
    torch.manual_seed(run.seed)  # after loading, so that the z draws depend on the seed alone
    per_block = score_blocks(loaded, blocks, run, scored)
    bounds = corpus_bounds(per_block, loaded.is_latent, run.iw_k, scored)
    counts = {**blocks.counts(), "scored_tokens": per_block.shape[0] * scored}
    record = {**run_header("likelihood", argv, asdict(run)), "model": loaded.describe(),
              "data": {"source": run.data, "split": run.split}, "counts": counts,
              "bounds": bounds, "headline": headline(bounds, run.metric),
              "protocol_notes": protocol_notes(loaded, run, counts)}
    write_json(record, run.output)
    print(summary_line(record), flush=True)
    return record


def with_error(value: float, error: float | None, digits: int) -> str:
    """``3.3712 ± 0.0045``, or the value alone when no standard error could be estimated."""
    return f"{value:.{digits}f}" + (f" ± {error:.{digits}f}" if error is not None else "")


def summary_line(record: dict) -> str:
    top, data = record["headline"], record["data"]
    bounds = []
    for name, bound in record["bounds"].items():
        error = bound["standard_error"] or {}
        bounds.append(f"{name} {with_error(bound['bits_per_token'], error.get('bits_per_token'), 4)} bits/token "
                      f"(PPL {with_error(bound['perplexity'], error.get('perplexity'), 2)})")
    value = with_error(top["value"], top["standard_error"], 4 if top["metric"] == "bpc" else 2)
    return (f"{record['model']['label']} on {data['source']} {data['split']}: {top['metric'].upper()} "
            f"{'≤ ' if top['is_upper_bound'] else '= '}{value} [{'; '.join(bounds)}; ± one standard error] over "
            f"{record['counts']['scored_tokens']} tokens ({record['counts']['blocks']} blocks) -> "
            f"{record['config']['output']}")


if __name__ == "__main__":
    sys.exit(run_command(main))
