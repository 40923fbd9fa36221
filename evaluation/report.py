"""Markdown tables in the layout of the paper's Tables 2 and 6, and a PNG of training curves.

    python -m evaluation.report [RESULT.json ...] [--logs RUN_DIR ...] [--output report.md] [--plot curves.png]

Results default to ``outputs/evaluation/*.json``, where the evaluation commands write (the shipped numbers are in
``bench/results/*.json``: pass them explicitly to compare). A JSON file counts as a result when
it was written by ``evaluation.likelihood`` or ``evaluation.generative`` (its ``evaluation`` field); any other file
(e.g. a throughput benchmark) is listed as skipped. Every number is shown with the data split, reference model or
featurizer that produced it, since numbers from different corpora or scoring models are not comparable.
"""

import argparse
import glob
import json
import os
import sys
from pathlib import Path

from training.errors import UsageError

from .cli import run_command
from .training_logs import TRAINING_LOG_NAMES, Curves, find_curve, read_training_log

DEFAULT_RESULT_GLOBS = ("outputs/evaluation/*.json",)  # where the evaluation commands write by default
EVALUATIONS = ("likelihood", "generative")


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
    rows = [[record["model"]["label"], count, gen_ppl, fmt(mauve.get("mauve"), 3), entropy, scored_with]]
    if "references" in record:
        data = f"Data ({record['config']['reference_data']} {record['config']['reference_split']})"
        gen_ppl, entropy = scores_cells(record["references"])
        rows.append([data, count, gen_ppl, "–", entropy, scored_with])
    return rows


def generative_table(records: list[dict]) -> str:
    header = ["Method", "Samples", "Gen PPL ↓", "MAUVE ↑", "Entropy ↑", "Gen-PPL model / MAUVE features"]
    return markdown_table(header, [row for record in records for row in generative_rows(record)])


def plot_training_curves(runs: dict[str, Curves], path, metrics=("loss", "bpc")) -> Path:
    """One panel per metric, one colour per run; the ``eval_<metric>`` curve, when logged, dashed beside it."""
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
        axis.set(xlabel="step", ylabel=metric, title=metric)
        axis.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def run_name(log) -> str:
    """A run's name in the legend: its folder's name (a log named metrics.jsonl says nothing by itself)."""
    log = Path(log)
    if log.is_dir():
        return log.name
    if log.name in TRAINING_LOG_NAMES or log.name.startswith("events.out.tfevents"):
        return log.parent.name
    return log.stem


def build_report(records: dict[str, list[dict]], skipped: list[str], plot_link: str | None = None) -> str:
    sections = ["# Evaluation report"]
    if records["likelihood"]:
        sections += ["## Likelihood (layout of paper Table 2)", likelihood_table(records["likelihood"]),
                     "≤: NELBO (or importance-weighted) upper bound on −log p(x); =: exact NLL of a causal LM. "
                     "BPC is bits per token for character models. ± one standard error (across blocks, z draws "
                     "included). Blocks: scored / in the split."]
    if records["generative"]:
        sections += ["## Generation (layout of paper Table 6)", generative_table(records["generative"]),
                     "Gen-PPL: token-weighted, first-EOS rule; entropy: mean per-sample unigram entropy of the "
                     "generated ids, nats; MAUVE: scaling 5, n/10 buckets. ± one standard error across samples."]
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
                        "training_log.jsonl or TensorBoard events), .jsonl or .csv logs")
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
    plot_link = None
    if args.logs:
        plot_path = args.plot or str(Path(args.output).with_name("training_curves.png"))
        plot_training_curves({run_name(log): read_log(log) for log in args.logs}, plot_path, args.curves)
        plot_link = os.path.relpath(plot_path, Path(args.output).parent)
    report = build_report(records, skipped, plot_link)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report, encoding="utf-8")
    print(report)
    return report


if __name__ == "__main__":
    sys.exit(run_command(main))
