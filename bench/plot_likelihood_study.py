"""Curves and tables of the likelihood study: train and validation NELBO (bits per character) against training
tokens and against training seconds, one figure per claim, as the paper's Fig. 2-4 show them, and a Markdown table
per claim (the numbers docs/results.md quotes).

    python -m bench.plot_likelihood_study                 # every bench/results/likelihood_study_*.json
    python -m bench.plot_likelihood_study --claims ladder --out docs/figures
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.environment import RESULTS_DIR  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def bits(nats: float) -> float:
    return nats / math.log(2)


def plot_claim(path: Path, out_dir: Path) -> Path:
    data = json.loads(path.read_text())
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for run in sorted(data["runs"], key=lambda r: (r["name"], r["seed"])):
        label = f"{run['name']} (seed {run['seed']})"
        for axis, x in zip(axes, ("tokens", "seconds")):
            train, valid = run["curves"]["train"], run["curves"]["validation"]
            line, = axis.plot([p[x] for p in train], [bits(p["nats"]) for p in train], alpha=0.35, lw=0.8)
            axis.plot([p[x] for p in valid], [bits(p["nats"]) for p in valid], "o-", color=line.get_color(),
                      lw=1.5, ms=3, label=label)
    axes[0].set_xlabel("training tokens (characters)")
    axes[1].set_xlabel("training seconds (2 CPU cores)")
    axes[0].set_ylabel("NELBO, bits per character (faint: train, dots: validation)")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.set_ylim(top=4.2)
    axes[1].legend(fontsize=7)
    figure.suptitle(f"likelihood study: {data['claim']} (literary-text8, not text8)")
    figure.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"likelihood_study_{data['claim']}.png"
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


def markdown_table(path: Path) -> str:
    """One row per run: steps, tokens, training seconds, validation BPC at the end and at equal tokens."""
    data = json.loads(path.read_text())
    runs = sorted(data["runs"], key=lambda r: (r["validation_bpc"], r["seed"]))
    common_tokens = min(r["tokens"] for r in runs)
    rows = [f"### {data['claim']}", "",
            f"| run | seed | parameters | steps | tokens | train s | valid BPC ≤ | valid BPC at {common_tokens:,} tokens "
            "| test BPC ≤ (K=1 / IW) |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        test = run.get("test", {}).get("bounds", {})
        test_cell = " / ".join(f"{b['bits_per_token']:.4f}" for b in test.values()) if test else "–"
        rows.append(f"| {run['name']} | {run['seed']} | {run['num_parameters']:,} | {run['steps']} | "
                    f"{run['tokens']:,} | {run['train_seconds']:.0f} | {run['validation_bpc']:.4f} | "
                    f"{at_tokens(run, common_tokens)} | {test_cell} |")
    return "\n".join(rows) + "\n"


def at_tokens(run: dict, tokens: int) -> str:
    """The validation point nearest below `tokens` (curves are sampled, so this is the closest measured one)."""
    points = [p for p in run["curves"]["validation"] if p["tokens"] <= tokens]
    return f"{bits(points[-1]['nats']):.4f} (at {points[-1]['tokens']:,})" if points else "–"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", nargs="+", default=None, help="claims to plot (default: every result file)")
    parser.add_argument("--out", default=str(REPO / "docs" / "figures"), help="folder for the PNGs")
    parser.add_argument("--markdown", action="store_true", help="print the tables instead of plotting")
    args = parser.parse_args(argv)
    paths = sorted(RESULTS_DIR.glob("likelihood_study_*.json"))
    if args.claims:
        paths = [p for p in paths if p.stem.removeprefix("likelihood_study_") in args.claims]
    for path in paths:
        print(markdown_table(path) if args.markdown else plot_claim(path, Path(args.out)))


if __name__ == "__main__":
    main()
