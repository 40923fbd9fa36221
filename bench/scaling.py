"""Training throughput and memory per token of a Mix-d TarFlowLM against GPT-2 as the vocabulary grows to GPT-2's
(V = 27 → 50257, d = 16) and with the sequence length.

TarFlowLM is the OWT Mix-d stack (the owt-mixd preset, after §4's Mix-d): a Mix-d layer tied to the encoder
codebook, then two Mix-1 layers of 64 mixtures with MAF heads, `--layers_per_flow` transformer layers each. GPT-2
has the same transformer (all of its layers, width, heads) and its V-way softmax head. A training step is forward + backward (no optimizer), timed in the
modes where the vocabulary matters:

- `stage1`: progressive stage 1 (§3.3), the Mix-d layer alone; its NELBO needs only log p_mixd(z), a V-way logsumexp
  (`output_u=False`) — as cheap as GPT-2's head;
- `stage1_through_u`: the same through u, i.e. the Rosenblatt transform's V·d terms per token (what stage 1 cost
  before `output_u=False`);
- `stage3`: all three layers with the Mix-d layer frozen: its output h^(1) needs the Rosenblatt transform (under
  `no_grad`, in chunks), so this is where V·d work remains.

Tokens per second are the best of interleaved rounds (the median beside it). Memory per token is the peak memory of
one step above what was held before it, per token: `torch.cuda.max_memory_allocated` on a GPU, and on a CPU the peak
resident memory of a forked process that runs the step.

    python -m bench.scaling [--vocab_sizes 27 1024 8192 50257] [--lengths 64 128 256] [--device cpu]
    python -m bench.scaling --vocab_sizes 27 50257 --lengths --before 9651dcc --token_rows 16 32 64 128
    python -m bench.scaling --quick --output_dir /tmp/scaling     # tiny sizes in seconds: checks the script runs

`--before COMMIT` adds every mode with the model code of that commit (same weights, interleaved): the fused
stage-1 pass (`tied_mixd_likelihood.py`) and the pruned frozen transform (`mixd_pruning.py`) against the code
before them.

Writes <output_dir>/scaling.json (default bench/results/) and a plot, scaling.png (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
from pathlib import Path

import torch

from bench.code_at import same_model_at
from bench.environment import RESULTS_DIR, write_result
from bench.forward import gpt2_like
from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM, fast_paths

MODES = {  # TarFlowLM forward arguments of each training mode
    "stage1": {"num_flow_layers": 1, "output_u": False},
    "stage1_through_u": {"num_flow_layers": 1, "output_u": True},
    "stage3": {"num_flow_layers": 3, "num_frozen_flow_layers": 1, "output_u": False},
}
QUICK = {"vocab_sizes": [27, 300], "lengths": [16, 32], "length_sweep_vocab_size": 300, "length": 16,
         "width": 32, "heads": 2, "layers_per_flow": 1, "batch_size": 2, "rounds": 1, "latent_dim": 4,
         "mixtures": 4, "output": "scaling"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab_sizes", type=int, nargs="+", default=[27, 1024, 8192, 50257],
                        help="vocabulary sizes V of the vocabulary sweep (at --length tokens)")
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence in the vocabulary sweep")
    parser.add_argument("--lengths", type=int, nargs="*", default=[64, 128, 256],
                        help="sequence lengths of the length sweep (at --length_sweep_vocab_size)")
    parser.add_argument("--length_sweep_vocab_size", type=int, default=8192, help="V of the length sweep")
    parser.add_argument("--latent_dim", type=int, default=16, help="d, the latent dimension per token")
    parser.add_argument("--mixtures", type=int, default=64, help="mixtures of the two Mix-1 layers")
    parser.add_argument("--width", type=int, default=128, help="transformer width of both models")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of both models")
    parser.add_argument("--layers_per_flow", type=int, default=2, help="transformer layers per flow layer")
    parser.add_argument("--batch_size", type=int, default=4, help="sequences per training step")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best and median kept)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="TarFlowLM modes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--before", default=None,
                        help="also time every TarFlowLM mode with the model code of this git commit, same weights, "
                             "interleaved (`bench/code_at.py`)")
    parser.add_argument("--model_folder", default=None,
                        help="also time a trained TarFlowLM (its own architecture and weights; a trained codebook is "
                             "what a frozen Mix-d layer meets in stages 2-3) against the GPT-2 of its transformer, on "
                             "validation text of --data, at its context length")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"
                                              / "literary-docs"), help="documents (valid.jsonl.gz) for --model_folder")
    parser.add_argument("--token_rows", type=int, nargs="*", default=[],
                        help="also time stage 1 at the largest V with these rows per chunk of the fused pass "
                             "(`fast_paths.CPU_TOKEN_ROWS`)")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes, one round (seconds): {QUICK}")
    parser.add_argument("--output_dir", default=str(RESULTS_DIR), help="where scaling.json and scaling.png go")
    parser.add_argument("--output", default="scaling", help="name of the JSON file (and of the PNG)")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return args


def tarflow_config(vocab_size: int, length: int, args) -> TarFlowConfig:
    layers = [{"coupling": "mixture_rosenblatt", "num_layers": args.layers_per_flow},
              {"coupling": "mixture_cdf", "num_mixtures": args.mixtures, "num_layers": args.layers_per_flow},
              {"coupling": "mixture_cdf", "num_mixtures": args.mixtures, "num_layers": args.layers_per_flow}]
    return TarFlowConfig(vocab_size=vocab_size, latent_dim=args.latent_dim, hidden_size=args.width,
                         num_attention_heads=args.heads, max_position_embeddings=length, flow_layers=layers)


def training_steps(vocab_size: int, length: int, args, trained: tuple | None = None) -> dict:
    """One forward + backward of every model and mode on the same batch, by name: a fresh model on random ids, or
    the `trained` (model, ids) pair."""
    torch.manual_seed(0)
    if trained is None:
        tarflow = TarFlowForCausalFlowLM(tarflow_config(vocab_size, length, args)).to(args.device)
        ids = torch.randint(0, vocab_size, (args.batch_size, length), device=args.device)
    else:
        tarflow, ids = trained
    gpt2 = gpt2_like(tarflow.config).to(args.device)

    def step(model, loss):
        def run():
            model.zero_grad(set_to_none=True)
            loss().backward()
        return run

    steps = {f"tarflow_{mode}": step(tarflow, lambda kwargs=MODES[mode]: tarflow(ids, **kwargs).loss)
             for mode in args.modes}
    if args.before:
        before = same_model_at(args.before, tarflow)
        steps.update({f"tarflow_{mode}_before": step(before, lambda kwargs=MODES[mode]: before(ids, **kwargs).loss)
                      for mode in args.modes})
    if args.token_rows and vocab_size == max(args.vocab_sizes) and length == args.length:
        steps.update({f"tarflow_stage1_rows{rows}": step(tarflow, with_token_rows(rows, lambda: tarflow(
            ids, **MODES["stage1"]).loss)) for rows in args.token_rows})
    steps["gpt2"] = step(gpt2, lambda: gpt2(ids, labels=ids).loss)
    return steps


def with_token_rows(rows: int, loss):
    """`loss` with the fused stage-1 pass in chunks of `rows` tokens on a CPU."""
    def run():
        saved, fast_paths.CPU_TOKEN_ROWS = fast_paths.CPU_TOKEN_ROWS, rows
        try:
            return loss()
        finally:
            fast_paths.CPU_TOKEN_ROWS = saved
    return run


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_step(steps: dict, args) -> dict[str, list[float]]:
    """Interleaved rounds of every step, after one warm-up each."""
    for run in steps.values():
        run()
    seconds = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, run in steps.items():
            synchronize(args.device)
            start = time.perf_counter()
            run()
            synchronize(args.device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def peak_step_bytes(run, device: str) -> float:
    """Peak memory of `run()` above what was held before it: the CUDA allocator's peak on a GPU. On a CPU, the peak
    resident set of a forked child that runs it, after returning the allocator's free pages to the system and
    resetting the peak (Linux `/proc/self/clear_refs`), so that only what the step itself touches counts; NaN where
    that is not possible."""
    if device.startswith("cuda"):
        synchronize(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        synchronize(device)
        return float(torch.cuda.max_memory_allocated() - before)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:                                                           # the child: measure, report, exit
        os.close(read)
        try:
            os.write(write, str(_child_peak_bytes(run)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        reported = pipe.read()
    os.waitpid(child, 0)
    return float(reported) if reported else float("nan")


def _child_peak_bytes(run) -> int:
    torch.set_num_threads(1)        # the parent's OpenMP workers are not in the child: a parallel region would hang
    ctypes.CDLL(None).malloc_trim(0)                   # glibc: free heap pages leave the resident set
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")                          # reset VmHWM, the peak resident set, to the current one
    before = _status_bytes("VmRSS")
    run()
    return _status_bytes("VmHWM") - before


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def trained_model(args) -> tuple:
    """The `--model_folder` TarFlowLM and `--batch_size` blocks of validation text at its context length."""
    from bench.mixture_cdf import validation_ids
    model = TarFlowForCausalFlowLM.from_pretrained(args.model_folder).to(args.device)
    ids = validation_ids(args.model_folder, args.data, model.config.max_position_embeddings)[:args.batch_size]
    return model, ids.to(args.device)


def measure_point(vocab_size: int, length: int, args, trained: tuple | None = None) -> list[dict]:
    """Rows of one (V, T): tokens/s and memory per token of every model and mode, and the ratio to GPT-2."""
    steps = training_steps(vocab_size, length, args, trained)
    seconds = seconds_per_step(steps, args)
    tokens = args.batch_size * length
    gpt2_speed = tokens / min(seconds["gpt2"])
    rows = []
    for name, times in seconds.items():
        speed = tokens / min(times)
        rows.append({"model": name, "vocab_size": vocab_size, "length": length, "tokens_per_second": speed,
                     "tokens_per_second_median": tokens / statistics.median(times), "ratio_to_gpt2": speed / gpt2_speed,
                     "memory_bytes_per_token": peak_step_bytes(steps[name], args.device) / tokens, "seconds": times})
        print(f"V={vocab_size:6d} T={length:5d} {name:28s} {speed:10.0f} tokens/s ({speed / gpt2_speed:.2f}× GPT-2), "
              f"{rows[-1]['memory_bytes_per_token'] / 2 ** 10:9.1f} KiB/token", flush=True)
    return rows


def plot(rows: list[dict], args, path: Path) -> str | None:
    """Tokens/s and memory per token against V and against T, one line per model and mode (None: no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    sweeps = (("vocab_size", "vocabulary size V", "sweep_vocab"), ("length", "sequence length T", "sweep_length"))
    for column, (key, label, sweep) in enumerate(sweeps):
        for name in dict.fromkeys(row["model"] for row in rows):
            points = sorted((row[key], row) for row in rows if row["model"] == name and row["sweep"] == sweep)
            if not points:
                continue
            for line, (metric, unit) in enumerate((("tokens_per_second", "tokens/s"),
                                                   ("memory_bytes_per_token", "bytes/token"))):
                axes[line][column].plot([x for x, _ in points], [row[metric] for _, row in points], "o-", label=name)
                axes[line][column].set(xscale="log", yscale="log", xlabel=label, ylabel=unit)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"training step, width {args.width}, d = {args.latent_dim}, batch {args.batch_size}, "
                    f"{args.device}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"resolved settings: {vars(args)}", flush=True)
    started, rows = time.perf_counter(), []
    for vocab_size in args.vocab_sizes:
        rows += [{**row, "sweep": "sweep_vocab"} for row in measure_point(vocab_size, args.length, args)]
    for length in args.lengths:
        rows += [{**row, "sweep": "sweep_length"}
                 for row in measure_point(args.length_sweep_vocab_size, length, args)]
    if args.model_folder:
        model, ids = trained_model(args)
        rows += [{**row, "sweep": "trained_model"}
                 for row in measure_point(model.config.vocab_size, ids.shape[1], args, (model, ids))]
    result = {"config": vars(args), "modes": MODES, "results": rows, "wall_seconds": time.perf_counter() - started}
    write_result(args.output, result, args.output_dir)              # before the plot: a plotting error loses nothing
    result["plot"] = plot(rows, args, Path(args.output_dir) / f"{args.output}.png")
    print(f"-> {write_result(args.output, result, args.output_dir)}, plot {result['plot']}")
    return result


if __name__ == "__main__":
    main()
