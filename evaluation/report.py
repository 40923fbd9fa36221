"""Markdown tables in the layout of the paper's Tables 2 and 6, and a PNG of training curves.

    python -m evaluation.report [RESULT.json ...] [--logs RUN_DIR ...] [--output report.md] [--plot curves.png]

Results default to ``outputs/evaluation/*.json``, where the evaluation commands write (the shipped numbers are in
``bench/results/*.json``: pass them explicitly to compare). A JSON file counts as a result when
it was written by ``evaluation.likelihood`` or ``evaluation.generative`` (its ``evaluation`` field); any other file
(e.g. a throughput benchmark) is listed as skipped. Every number is shown with the data split, reference model or
featurizer that produced it, since numbers from different corpora or scoring models are not comparable; MAUVE
from fewer than `MAUVE_MIN_SAMPLES` samples says beside it that it is noise. Run folders given to ``--logs`` add a
table of their ``results.json`` (with the GPT-2 baseline's folder beside a TarFlowLM one, and a sentence on whether
the two were trained for equal steps or equal wall-clock) and the training curves, marked where each progressive
stage starts and over the early plateau.
"""

import argparse
import glob
import json
import os
import sys
from pathlib import Path

from training.errors import UsageError

from .cli import run_command
from .training_logs import (TRAINING_LOG_NAMES, Curves, baseline_folder, early_plateau, find_curve,
                            read_training_log, run_summary, stage_starts)

DEFAULT_RESULT_GLOBS = ("outputs/evaluation/*.json",)  # where the evaluation commands write by default
EVALUATIONS = ("likelihood", "generative")
MAUVE_MIN_SAMPLES = 1000
"""Below this many samples per side MAUVE is noise: it quantises both sets into n/10 k-means buckets, so at n = 48
(the quick protocol) there are 4, and reruns of the same model differ by more than models do. MAUVE's authors and
ReMDM use 5,000."""


def load_results(paths) -> tuple[dict[str, list[dict]], list[str]]:
    """Evaluation records grouped by kind (``likelihood``, ``generative``), and the paths that were skipped."""
    records, skipped = {kind: [] for kind in EVALUATIONS}, []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            skipped.append(str(path))
            continue
        kind = record.get("evaluation") if isinstance(record, dict) else None
        if kind in records and is_readable_record(record, kind):
            records[kind].append(record)
        else:
            skipped.append(str(path))
    return records, skipped


def is_readable_record(record: dict, kind: str) -> bool:
    """Whether a record has every field its table row reads (a truncated or hand-edited file may not): such a
    file is listed as skipped rather than stopping the report."""
    try:
        likelihood_row(record) if kind == "likelihood" else generative_rows(record)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return False
    return True


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def fmt(value, digits: int, error=None) -> str:
    """A number, ``–`` when missing, with ``± error`` when a standard error was recorded."""
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + (f" ± {error:.{digits}f}" if error else "")


def bound_cell(bound: dict, metric: str, upper: bool) -> str:
    """``≤ 1.302 ± 0.004`` (BPC) or ``≤ 22.64 ± 0.31`` (PPL); ``=`` for an exact NLL; no ± in results written before
    standard errors were recorded."""
    unit, digits = ("bits_per_token", 3) if metric == "bpc" else ("perplexity", 2)
    return f"{'≤' if upper else '='} {fmt(bound[unit], digits, (bound.get('standard_error') or {}).get(unit))}"


def likelihood_row(record: dict) -> list[str]:
    headline, bounds, metric = record["headline"], record["bounds"], record["headline"]["metric"]
    main = bound_cell(bounds[headline["bound"]], metric, headline["is_upper_bound"])
    tighter = [f"K={name[4:]}: {bound_cell(bound, metric, True)}" for name, bound in bounds.items()
               if name.startswith("iw_k")]
    data, counts = record["data"], record["counts"]
    blocks = f"{counts['blocks']:,} of {counts['blocks_in_split']:,}" if "blocks_in_split" in counts else "–"
    return [record["model"]["label"], record["model"]["model_type"] or "", f"{data['source']} {data['split']}",
            main if metric == "bpc" else "", main if metric == "ppl" else "", ", ".join(tighter) or "–",
            str(record["config"]["num_z_samples"] or "exact"), blocks, f"{counts['scored_tokens']:,}"]


def likelihood_table(records: list[dict]) -> str:
    header = ["Method", "Type", "Data", "BPC ↓", "PPL ↓", "IW bounds", "z samples", "Blocks", "Tokens"]
    return markdown_table(header, [likelihood_row(r) for r in records])


def scores_cells(section: dict) -> list[str]:
    """Gen-PPL and mean entropy of one set of texts (samples or references), with their standard errors."""
    gen_ppl, entropy = section.get("gen_ppl", {}), section.get("entropy", {})
    return [fmt(gen_ppl.get("gen_ppl"), 2, gen_ppl.get("standard_error")),
            fmt(entropy.get("mean"), 2, entropy.get("standard_error"))]


def generative_rows(record: dict) -> list[list[str]]:
    """The model's row, and a 'Data' row when the reference texts were scored too (Table 6's first row)."""
    mauve = record.get("mauve") or {}
    scored_with = [record["samples"].get("gen_ppl", {}).get("reference_model"), mauve.get("featurizer")]
    scored_with = " / ".join(name or "–" for name in scored_with)
    count = str(record["config"]["num_samples"])
    gen_ppl, entropy = scores_cells(record["samples"])
    rows = [[record["model"]["label"], count, gen_ppl, mauve_cell(mauve), entropy, scored_with]]
    if "references" in record:
        data = f"Data ({record['config']['reference_data']} {record['config']['reference_split']})"
        gen_ppl, entropy = scores_cells(record["references"])
        rows.append([data, count, gen_ppl, "–", entropy, scored_with])
    return rows


def mauve_cell(mauve: dict) -> str:
    """MAUVE, marked as noise beside the number when fewer than `MAUVE_MIN_SAMPLES` samples were compared."""
    cell = fmt(mauve.get("mauve"), 3)
    count = min(mauve.get("num_samples") or 0, mauve.get("num_references") or 0)
    return cell + (f" (noise at {count} samples)" if mauve.get("mauve") is not None and count < MAUVE_MIN_SAMPLES
                   else "")


def generative_table(records: list[dict]) -> str:
    header = ["Method", "Samples", "Gen PPL ↓", "MAUVE ↑", "Entropy ↑", "Gen-PPL model / MAUVE features"]
    return markdown_table(header, [row for record in records for row in generative_rows(record)])


def plot_training_curves(runs: dict[str, Curves], path, metrics=("loss", "bpc")) -> Path:
    """One panel per metric, one colour per run; the ``eval_<metric>`` curve, when logged, dashed beside it; dotted
    lines where progressive stages start and a shaded band over each run's early plateau (`mark_run`)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for colour, (name, curves) in enumerate(runs.items()):
            for suffix, style in ((metric, "-"), (f"eval_{metric}", "--o")):  # eval points are sparse: mark them
                points = find_curve(curves, suffix)
                if points:
                    steps, values = zip(*points)
                    axis.plot(steps, values, style, color=f"C{colour}", markersize=3, label=f"{name} {suffix}")
            mark_run(axis, curves, f"C{colour}")
        axis.set(xlabel="step", ylabel=metric, title=metric)
        axis.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def mark_run(axis, curves: Curves, colour: str) -> None:
    """Where a run's stages start (after the first) and its early plateau, so that a reader of a curve that stays
    flat near the bigram level knows the run is not stuck (docs/results.md)."""
    for step, index in stage_starts(curves):
        if index > 1:
            axis.axvline(step, color=colour, linestyle=":", linewidth=1)
            axis.annotate(f"stage {index}", (step, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                          fontsize="x-small", va="bottom", ha="right", color=colour)
    plateau = early_plateau(find_curve(curves, "loss") or [])
    if plateau:
        axis.axvspan(*plateau, color=colour, alpha=0.12, label=f"early plateau, steps {plateau[0]}-{plateau[1]} "
                     "(expected: bigram level)")


def training_runs(logs: list) -> list[tuple[str, dict]]:
    """(name, results.json) of each run folder among ``logs``, and of the GPT-2 baseline beside a TarFlowLM run
    when that folder exists (`training_logs.baseline_folder`)."""
    folders = [Path(log) for log in logs if Path(log).is_dir()]
    folders += [baseline for folder in folders if (baseline := baseline_folder(folder)) and baseline not in folders]
    return [(folder.name, summary) for folder in folders if (summary := run_summary(folder))]


def training_table(runs: list[tuple[str, dict]]) -> str:
    header = ["Run", "Model", "Steps", "Training time", "Parameters", "Validation (EMA weights)"]
    rows = [[name, summary["model"], f"{summary['steps']:,}", f"{summary['train_seconds']:.0f} s",
             f"{summary['num_parameters']:,}", ", ".join(f"{key} {value:.4f}" for key, value in
                                                         summary["validation"].items())] for name, summary in runs]
    return markdown_table(header, rows)


def baseline_sentence(runs: list[tuple[str, dict]]) -> str:
    """How the GPT-2 baseline was trained against the TarFlowLM run: equal steps, equal wall-clock, or neither."""
    by_model = {summary["model"]: summary for _, summary in runs}
    if not {"tarflow", "gpt2"} <= by_model.keys():
        return ""
    tarflow, gpt2 = by_model["tarflow"], by_model["gpt2"]
    times = f"{gpt2['train_seconds']:.0f} s of training against {tarflow['train_seconds']:.0f} s"
    if gpt2["steps"] == tarflow["steps"]:
        return (f"The GPT-2 baseline was trained for the same {gpt2['steps']:,} optimizer steps as TarFlowLM (equal "
                f"steps, not equal wall-clock: {times}).")
    if abs(gpt2["train_seconds"] - tarflow["train_seconds"]) <= 0.1 * tarflow["train_seconds"]:
        return f"The GPT-2 baseline was trained for the same wall-clock time as TarFlowLM ({times})."
    return (f"The GPT-2 baseline was trained for {gpt2['steps']:,} steps against TarFlowLM's {tarflow['steps']:,} "
            f"({times}): neither equal steps nor equal wall-clock.")


def run_name(log) -> str:
    """A run's name in the legend: its folder's name (a log named metrics.jsonl says nothing by itself)."""
    log = Path(log)
    if log.is_dir():
        return log.name
    if log.name in TRAINING_LOG_NAMES or log.name.startswith("events.out.tfevents"):
        return log.parent.name
    return log.stem


def build_report(records: dict[str, list[dict]], skipped: list[str], plot_link: str | None = None,
                 runs: list[tuple[str, dict]] = ()) -> str:
    sections = ["# Evaluation report"]
    if runs:
        sections += ["## Training runs", training_table(runs),
                     " ".join(filter(None, [baseline_sentence(runs), "Validation: the training script's split and "
                                            "loss (TarFlowLM: the NELBO with one z draw, an upper bound)."]))]
    if records["likelihood"]:
        sections += ["## Likelihood (layout of paper Table 2)", likelihood_table(records["likelihood"]),
                     "≤: NELBO (or importance-weighted) upper bound on −log p(x); =: exact NLL of a causal LM. "
                     "BPC is bits per token for character models. ± one standard error (across blocks, z draws "
                     "included). Blocks: scored / in the split."]
    if records["generative"]:
        sections += ["## Generation (layout of paper Table 6)", generative_table(records["generative"]),
                     "Gen-PPL: token-weighted, first-EOS rule; entropy: mean per-sample unigram entropy of the "
                     "generated ids, nats; MAUVE: scaling 5, n/10 buckets, noise below "
                     f"{MAUVE_MIN_SAMPLES:,} samples (the paper's protocol uses 5,000). ± one standard error across "
                     "samples."]
    if plot_link:
        sections += ["## Training curves", f"![training curves]({plot_link})"]
    if skipped:
        sections += ["Skipped (not evaluation results): " + ", ".join(f"`{path}`" for path in skipped)]
    return "\n\n".join(sections) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", help="evaluation JSON files (default: "
                        f"{' and '.join(DEFAULT_RESULT_GLOBS)})")
    parser.add_argument("--logs", nargs="*", default=[], help="training runs to plot: run folders (holding "
                        "metrics.jsonl, training_log.jsonl or TensorBoard events), .jsonl or .csv logs; a run "
                        "folder's results.json is tabled, and a GPT-2 baseline folder beside a TarFlowLM one "
                        "(outputs/quickstart-gpt2 beside outputs/quickstart-tarflow) is added")
    parser.add_argument("--curves", nargs="+", default=["loss", "bpc"], help="metrics to plot, one panel each; "
                        "eval_<metric> is drawn dashed in the same panel")
    parser.add_argument("--output", default="outputs/evaluation/report.md", help="Markdown file to write")
    parser.add_argument("--plot", default=None, help="PNG of the training curves (default: training_curves.png "
                        "beside --output, when --logs are given)")
    return parser


def read_log(log) -> Curves:
    """`read_training_log`, its failures on a missing or malformed log as one ``error:`` line naming it."""
    try:
        return read_training_log(log)
    except (OSError, ValueError, KeyError, ImportError) as error:
        raise UsageError(f"--logs {log}: {error}") from error


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    paths = args.results or sorted(p for pattern in DEFAULT_RESULT_GLOBS for p in glob.glob(pattern))
    records, skipped = load_results(paths)
    plot_link, runs = None, training_runs(args.logs)
    if args.logs:
        logs = args.logs + [baseline_folder(log) for log in args.logs if baseline_folder(log)]
        plot_path = args.plot or str(Path(args.output).with_name("training_curves.png"))
        plot_training_curves({run_name(log): read_log(log) for log in dict.fromkeys(map(str, logs))},
                             plot_path, args.curves)
        plot_link = os.path.relpath(plot_path, Path(args.output).parent)
    report = build_report(records, skipped, plot_link, runs)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report, encoding="utf-8")
    print(report)
    return report


if __name__ == "__main__":
    sys.exit(run_command(main))
