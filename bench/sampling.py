"""Sampling speed of TarFlowLM against `GPT2LMHeadModel.generate` (KV cache) of the same depth and width.

Models: the char-level configuration of `forward.py` (Mix-d tied + 2 x Mix-1 with V = 2 and MAF heads, 3 flow layers
of 4 transformer layers, width 256, V = 27, d = 5) at patch sizes 1, 2 and 4 — and, as the `no_maf` variant, the
same with Mix-1 layers whose channels are independent given the history (no MAF head, as in the paper's text8
mixture study, Fig. 4) — each trained for `--train_steps` steps on the shipped corpus first (so that no flow is the
identity and the root finder and Jacobi iteration meet realistic mixtures), and the GPT-2 of the same 12 layers and
width. For batch 1 and 32, tokens per second of
TarFlowLM's exact sequential sampler (KV cache), of its Jacobi sampler, and of GPT-2's `generate`; configurations
run interleaved, `--rounds` times, and the best round is kept beside the median (background load only ever slows a
round down). Also recorded: the Jacobi sample's drift from the sequential one for the same noise, the root-finder
and fixed-point iterations, the KV cache's speed-up over recomputing the transformer, whether `decoding="auto"`
chose the faster of the two, and (`--count_ops`) the tensor operations per token of each sampler and part of the
model — what batch-1 sampling time is made of, the same on every machine.

`--model_folder` times a trained TarFlowLM (e.g. the quickstart's `outputs/quickstart-tarflow/model`) instead, against the
GPT-2 of its depth, width and vocabulary; `--rounds 0` only counts operations (no timing).

    python -m bench.sampling [--length 128] [--rounds 3] [--threads 1] [--count_ops]
    python -m bench.sampling --model_folder outputs/quickstart-tarflow/model --output sampling_quickstart --count_ops
    python -m bench.sampling --model_folder outputs/bpe-mixd/model --before 9651dcc --methods sequential \
        --batch_sizes 1 16 --length 16 --rounds 2 --count_kept --output sampling_bpe_mixd   # V = 50257
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import torch
import transformers

from bench.code_at import same_model_at
from bench.environment import RESULTS_DIR, write_result
from bench.forward import build_models, gpt2_like
from bench.profiling import count_operations, operations_by_part, seconds_by_part
from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM, TarFlowGenerationConfig, couplings

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "data" / "tiny-literary" / "train.txt.gz"
METHODS = ("sequential", "jacobi", "gpt2")
VARIANTS = ("maf", "no_maf")
TRAINED = "trained"          # the variant name of a `--model_folder` model
BEFORE = "before"            # ... and of the same model run by the code of `--before`


class Cell(NamedTuple):
    """One timed configuration: a TarFlowLM (variant, patch size) or GPT-2 (None, None), a batch size, a method, and
    the `torch.compile` backend of TarFlowLM's coupling inverses (None: eager)."""

    variant: str | None
    patch_size: int | None
    batch_size: int
    method: str
    compile_backend: str | None = None


def add_trained_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the `--model_folder` runs: the code before a change, the inversions timed, the kept components."""
    parser.add_argument("--before", default=None,
                        help="with --model_folder: also time that model with the model code of this git commit "
                             "(same weights, interleaved; `bench/code_at.py`)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS[:2]), choices=METHODS[:2],
                        help="TarFlowLM inversions to time")
    parser.add_argument("--count_kept", action="store_true",
                        help="record the components the Mix-d inverse keeps per dimension (its certified pruning), "
                             "over one sequential sample per batch size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=128, help="tokens sampled per sequence (a multiple of 4)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32], help="sequences sampled per call")
    parser.add_argument("--patch_sizes", type=int, nargs="+", default=[1, 2, 4], help="TarFlowLM patch sizes P")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="maf: Mix-1 layers with MAF heads (the default configuration); no_maf: without")
    parser.add_argument("--width", type=int, default=256, help="transformer width of both models")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of both models")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best and median kept)")
    parser.add_argument("--jacobi_block_size", type=int, default=32, help="patches per Jacobi block")
    parser.add_argument("--jacobi_tolerance", type=float, default=1e-4, help="Jacobi stopping change of a latent")
    parser.add_argument("--train_steps", type=int, default=150, help="training steps before timing (0: untrained)")
    parser.add_argument("--train_batch_size", type=int, default=8, help="sequences per training step")
    parser.add_argument("--train_length", type=int, default=64, help="tokens per training sequence")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="AdamW learning rate of the short training")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is immune to the stalls several threads suffer on a shared CPU)")
    parser.add_argument("--model_folder", default=None,
                        help="a trained TarFlowLM folder to time instead of the briefly trained char models (its patch "
                             "size is used; --variants, --patch_sizes and the training flags are then ignored)")
    add_trained_model_flags(parser)
    parser.add_argument("--compile_backend", default=None,
                        help="also time TarFlowLM with its per-patch coupling inverses compiled by this torch.compile "
                             "backend (e.g. inductor), beside the eager cells, at --compile_batch_sizes")
    parser.add_argument("--compile_batch_sizes", type=int, nargs="+", default=[1],
                        help="batch sizes of the compiled cells (each batch shape compiles anew)")
    parser.add_argument("--compile_methods", nargs="+", default=list(METHODS[:2]), choices=METHODS[:2],
                        help="decodings of the compiled cells (each compiles its own shapes: minutes per model)")
    parser.add_argument("--skip_drift", action="store_true",
                        help="skip the Jacobi sample's drift from the sequential one (two more samples a cell)")
    parser.add_argument("--profile", action="store_true",
                        help="also time each part of the model (transformer steps, coupling inverses) in one more "
                             "sample of every batch-1 sequential cell")
    parser.add_argument("--count_ops", action="store_true",
                        help="also count the tensor operations per token of every sampler, per part of the model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--output", default="sampling", help="name of the JSON file")
    parser.add_argument("--output_dir", default=str(RESULTS_DIR), help="where the JSON file goes")
    return parser.parse_args(argv)


def corpus_ids() -> torch.Tensor:
    """The shipped corpus's training split as text8 character ids (it is text8-normalised already)."""
    from training.tokenization_char import encode_text8

    with gzip.open(CORPUS, "rt") as file:
        return torch.from_numpy(encode_text8(file.read()).astype("int64"))


def train_briefly(model: TarFlowForCausalFlowLM, ids: torch.Tensor, args) -> float:
    """A few AdamW steps on random windows of the corpus; returns the last NELBO per token."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(args.train_steps):
        starts = torch.randint(0, len(ids) - args.train_length, (args.train_batch_size,), generator=generator)
        loss = model(torch.stack([ids[s:s + args.train_length] for s in starts.tolist()])).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def build(args):
    """GPT-2 and the TarFlowLMs to time, by (variant, patch size), all of the same depth and width: one trained
    model from `--model_folder`, or one briefly trained model per variant and patch size."""
    if args.model_folder:
        model = TarFlowForCausalFlowLM.from_pretrained(args.model_folder).to(args.device).eval().requires_grad_(False)
        args.variants, args.patch_sizes = [TRAINED], [model.config.patch_size]
        models = {(TRAINED, model.config.patch_size): model}
        if args.before:
            args.variants.append(BEFORE)
            models[BEFORE, model.config.patch_size] = same_model_at(args.before, model).requires_grad_(False)
        return models, {}, gpt2_like(model.config).to(args.device).eval()
    tarflow, gpt2 = build_models(args.width, args.heads, 256, args.device)
    ids = corpus_ids()
    models, losses = {}, {}
    for variant in args.variants:
        layers = [{**layer, "autoregressive_dims": False} if layer["coupling"] == "mixture_cdf" and
                  variant == "no_maf" else layer for layer in tarflow.config.flow_layers]
        for patch_size in args.patch_sizes:
            torch.manual_seed(patch_size)
            config = TarFlowConfig.from_dict({**tarflow.config.to_dict(), "patch_size": patch_size,
                                              "flow_layers": layers})
            models[variant, patch_size] = TarFlowForCausalFlowLM(config).to(args.device)
            losses[variant, patch_size] = train_briefly(models[variant, patch_size], ids.to(args.device), args) \
                if args.train_steps else None
            models[variant, patch_size].eval().requires_grad_(False)
    return models, losses, gpt2.eval().requires_grad_(False)


def sampler(cell: Cell, model, args):
    """A function of a seed drawing `cell.batch_size` samples of `args.length` tokens with `cell.method`."""
    if cell.method == "gpt2":
        start = torch.zeros(cell.batch_size, 1, dtype=torch.long, device=model.device)
        return lambda seed: model.generate(start, attention_mask=torch.ones_like(start), do_sample=True,
                                           max_new_tokens=args.length, min_new_tokens=args.length, pad_token_id=0)
    return lambda seed: model.generate(max_new_tokens=args.length, num_return_sequences=cell.batch_size, seed=seed,
                                       decoding=cell.method, jacobi_block_size=args.jacobi_block_size,
                                       jacobi_tolerance=args.jacobi_tolerance, compile_backend=cell.compile_backend,
                                       return_dict_in_generate=True)


def timed(function, seed: int) -> tuple[float, object]:
    synchronize()
    start = time.perf_counter()
    output = function(seed)
    synchronize()
    return time.perf_counter() - start, output


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def all_cells(args, models) -> list[Cell]:
    backends = {batch: [None] + ([args.compile_backend] if args.compile_backend and batch in args.compile_batch_sizes
                                 else []) for batch in args.batch_sizes}
    cells = [Cell(*key, batch, method, backend) for batch in args.batch_sizes for key in models
             for backend in backends[batch] for method in args.methods
             if backend is None or method in args.compile_methods]
    return cells + [Cell(None, None, batch, "gpt2") for batch in args.batch_sizes]


def measure(args, models, gpt2) -> dict:
    """Seconds per call of every cell, interleaved over rounds, and each cell's output of the last round."""
    if args.compile_backend:
        # one compiled graph per coupling, batch and block shape: more than TorchDynamo's default 8 per function,
        # past which it would silently run the rest eagerly
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    functions = {cell: sampler(cell, gpt2 if cell.method == "gpt2" else models[cell.variant, cell.patch_size],
                               args) for cell in all_cells(args, models)}
    seconds, outputs = {cell: [] for cell in functions}, {}
    for function in functions.values():                                      # warm-up: allocator, caches
        function(0)
    for round_index in range(args.rounds):
        for cell, function in functions.items():
            elapsed, outputs[cell] = timed(function, round_index)
            seconds[cell].append(elapsed)
            print(f"round {round_index + 1}: {tuple(cell)} {cell.batch_size * args.length / elapsed:8.1f} tokens/s",
                  flush=True)
    return {"seconds": seconds, "outputs": outputs}


def operations_per_token(args, models, gpt2) -> list[dict]:
    """Tensor operations per sampled token of every cell (untimed), TarFlowLM's split by part of the model."""
    rows = []
    for cell in all_cells(args, models):
        if cell.compile_backend:
            continue                              # a compiled graph's operations are not dispatched one by one
        tokens = cell.batch_size * args.length
        if cell.method == "gpt2":
            parts = {"all": count_operations(lambda: sampler(cell, gpt2, args)(0))}
        else:
            model = models[cell.variant, cell.patch_size]
            parts = operations_by_part(model, lambda: sampler(cell, model, args)(0))
        rows.append({**cell._asdict(), "total": sum(parts.values()) / tokens,
                     "by_part": {part: count / tokens for part, count in parts.items()}})
        print(f"{tuple(cell)}: {rows[-1]['total']:.0f} operations per token", flush=True)
    return rows


def drift(model, cell: Cell, args) -> dict:
    """A cell's sample against the exact one (eager sequential) for the same noise: largest |Δz| and the fraction of
    tokens whose decoded argmax differs. The Jacobi sample drifts by its stopping tolerance; a compiled sample by
    the compiler's reordering of float arithmetic."""
    settings = dict(max_new_tokens=args.length, num_return_sequences=cell.batch_size, seed=123, do_sample=False,
                    output_hidden_states=True, jacobi_block_size=args.jacobi_block_size,
                    jacobi_tolerance=args.jacobi_tolerance)
    exact = model.generate(decoding="sequential", **settings)
    sample = model.generate(decoding=cell.method, compile_backend=cell.compile_backend, **settings)
    return {"max_abs_z_difference": float((sample.hidden_states[-1] - exact.hidden_states[-1]).abs().max()),
            "token_disagreement": float((sample.sequences != exact.sequences).float().mean())}


def kv_cache_speedup(model, args) -> dict:
    """Sequential sampling of one sequence with and without the KV cache (recomputing the transformer over all
    earlier patches is O(N²)); same noise, so the samples must agree."""
    runs = {}
    for use_cache in (True, False):
        elapsed, ids = timed(lambda seed: model.generate(max_new_tokens=args.length, seed=seed, use_cache=use_cache,
                                                         do_sample=False), 7)
        runs[use_cache] = (elapsed, ids)
    return {"patch_size": model.config.patch_size, "batch_size": 1, "length": args.length,
            "tokens_per_second_cached": args.length / runs[True][0],
            "tokens_per_second_uncached": args.length / runs[False][0],
            "speedup": runs[False][0] / runs[True][0], "identical_samples": bool(torch.equal(runs[True][1],
                                                                                          runs[False][1]))}


def summarise(args, measured, models) -> list[dict]:
    gpt2_best = {batch: batch * args.length / min(measured["seconds"][Cell(None, None, batch, "gpt2")])
                 for batch in args.batch_sizes}
    rows = []
    for cell, times in measured["seconds"].items():
        best = cell.batch_size * args.length / min(times)
        row = {"model": "GPT-2" if cell.method == "gpt2" else f"TarFlowLM ({cell.variant})",
               "variant": cell.variant, "patch_size": cell.patch_size, "batch_size": cell.batch_size,
               "decoding": "generate (KV cache)" if cell.method == "gpt2" else cell.method,
               "compile_backend": cell.compile_backend,
               "tokens_per_second": best,
               "tokens_per_second_median": cell.batch_size * args.length / statistics.median(times),
               "ratio_to_gpt2": best / gpt2_best[cell.batch_size], "seconds": times}
        if cell.method != "gpt2":
            output = measured["outputs"][cell]
            row["root_iterations_per_layer"] = output.root_iterations
            row["fixed_point_iterations_per_block"] = [list(blocks) for blocks in output.fixed_point_iterations]
            if (cell.method == "jacobi" or cell.compile_backend) and not args.skip_drift:
                row["drift_from_sequential"] = drift(models[cell.variant, cell.patch_size], cell, args)
        rows.append(row)
    return rows


def auto_rule_check(rows: list[dict]) -> list[dict]:
    """For every TarFlowLM (variant, patch size, batch size, compile backend): the faster of sequential and Jacobi
    decoding, and what `decoding="auto"` chooses there (with the default `jacobi_max_batch_size`)."""
    speeds = {(r["variant"], r["patch_size"], r["batch_size"], r["compile_backend"], r["decoding"]):
              r["tokens_per_second"] for r in rows}
    checks = []
    for variant, patch_size, batch_size, backend, decoding in speeds:
        if decoding != "sequential" or (variant, patch_size, batch_size, backend, "jacobi") not in speeds:
            continue
        sequential, jacobi = (speeds[variant, patch_size, batch_size, backend, method] for method in METHODS[:2])
        faster = "jacobi" if jacobi > sequential else "sequential"
        chosen = TarFlowGenerationConfig(decoding="auto").resolved_decoding(batch_size)
        checks.append({"variant": variant, "patch_size": patch_size, "batch_size": batch_size,
                       "compile_backend": backend, "faster": faster,
                       "auto_chooses": chosen, "auto_is_faster": chosen == faster,
                       "jacobi_over_sequential": jacobi / sequential})
    return checks


def print_table(rows: list[dict]) -> None:
    print(f"\n{'model':22s} {'P':>2s} {'batch':>5s} {'decoding':20s} {'compiled':9s} {'tokens/s':>9s} "
          f"{'vs GPT-2':>8s}")
    for row in sorted(rows, key=lambda r: (r["batch_size"], r["model"], r["patch_size"] or 0,
                                           r["compile_backend"] or "", r["decoding"])):
        print(f"{row['model']:22s} {row['patch_size'] or '':>2} {row['batch_size']:5d} {row['decoding']:20s} "
              f"{row['compile_backend'] or '':9s} {row['tokens_per_second']:9.1f} {row['ratio_to_gpt2']:8.2f}")


def timings(args, models, gpt2) -> dict:
    """The timed part of the result: rows, the auto rule against them, the KV cache's speed-up, and (`--profile`)
    the batch-1 sequential cells' milliseconds per token in each part of the model."""
    rows = summarise(args, measure(args, models, gpt2), models)
    print_table(rows)
    cache_model = models[args.variants[0], 2 if 2 in args.patch_sizes else args.patch_sizes[0]]
    result = {"results": rows, "auto_rule": auto_rule_check(rows), "kv_cache": kv_cache_speedup(cache_model, args)}
    return {**result, "profile": time_profile(args, models)} if args.profile else result


def time_profile(args, models) -> list[dict]:
    """Milliseconds per sampled token in each part of the model, for every batch-1 sequential cell (one more
    sample each, after the timed rounds)."""
    rows = []
    for cell in all_cells(args, models):
        if cell.batch_size != 1 or cell.method != "sequential":
            continue
        model = models[cell.variant, cell.patch_size]
        parts = seconds_by_part(model, lambda: sampler(cell, model, args)(0))
        rows.append({**cell._asdict(), "milliseconds_per_token": {part: 1e3 * seconds / args.length
                                                                  for part, seconds in parts.items()}})
        print(f"{tuple(cell)}: " + ", ".join(f"{part} {value:.2f}" for part, value in
                                             rows[-1]["milliseconds_per_token"].items()) + " ms/token", flush=True)
    return rows


def kept_components(model, args) -> dict:
    """Per batch size and Mix-d dimension, the components its inverse solved with (certified pruning,
    `mixd_pruning.prune_mixture`; all K where it solved the full mixture), over one sequential sample."""
    calls: list[int] = []
    prune = couplings.prune_mixture

    def recording(u, log_alpha, *rest, **options):
        pruned = prune(u, log_alpha, *rest, **options)
        calls.append(log_alpha.shape[-1] if pruned is None else pruned.log_w.shape[-1])
        return pruned
    result, dim = {}, model.config.latent_dim
    for batch in args.batch_sizes:
        calls.clear()
        with mock.patch.object(couplings, "prune_mixture", recording):
            model.generate(max_new_tokens=args.length, num_return_sequences=batch, seed=0, decoding="sequential")
        result[batch] = [{"dimension": i + 1, "mean_kept": statistics.mean(calls[i::dim]),
                          "max_kept": max(calls[i::dim]),
                          "full_fraction": statistics.mean(n == model.config.vocab_size for n in calls[i::dim])}
                         for i in range(dim)]
        print(f"batch {batch}: mean kept components per dimension "
              f"{[round(row['mean_kept']) for row in result[batch]]}", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()   # GPT-2's generate warns about pad = eos for an unpadded start
    torch.set_num_threads(args.threads)
    print(f"resolved settings: {vars(args)}", flush=True)
    started = time.perf_counter()
    models, losses, gpt2 = build(args)
    print(f"built {len(models)} models in {time.perf_counter() - started:.0f} s: NELBO/token {losses}", flush=True)
    result = {
        "note": ("best of interleaved rounds is the figure, the median beside it shows the spread; operation counts "
                 "are per sampled token and do not depend on the machine"),
        "config": {**vars(args), "tarflow_flow_layers": {
            variant: models[variant, args.patch_sizes[0]].config.flow_layers for variant in args.variants},
                   "transformer_layers": gpt2.config.n_layer, "vocab_size": gpt2.config.vocab_size},
        "parameters": {"gpt2": gpt2.num_parameters(),
                       **{f"tarflow_{v}_P{p}": model.num_parameters() for (v, p), model in models.items()}},
        "training_nelbo_per_token": {f"{v}_P{p}": loss for (v, p), loss in losses.items()},
        **(timings(args, models, gpt2) if args.rounds else {}),
        **({"operations_per_token": operations_per_token(args, models, gpt2)} if args.count_ops else {}),
        **({"mixd_kept_components": kept_components(models[args.variants[0], args.patch_sizes[0]], args)}
           if args.count_kept else {}),
    }
    result["wall_seconds"] = time.perf_counter() - started
    print(f"-> {write_result(args.output, result, args.output_dir)} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
