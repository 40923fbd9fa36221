"""Gen-PPL against entropy over one sampling setting (``python -m evaluation.generative MODEL --sweep NAME V...``):
the trade-off by which samplers are compared (Table 6 reports one point of it per model).

Each value gets its own scored run at the same seed (``evaluation.generative.score_samples``); the result is one
JSON file with a row per setting (its summary and two example samples) and a PNG of Gen-PPL (y) against entropy
(x), each point labelled with its value, ± one standard error. ``temperature`` and ``top_p`` act on the next-token
distribution (a causal LM's logits; TarFlowLM's π_t with a tied Mix-d first layer); ``noise_temperature`` is
TarFlowLM's τ.
"""

import dataclasses
from pathlib import Path

from .cli import SettingsError
from .records import run_header, write_json

SWEEPABLE = ("temperature", "top_p", "noise_temperature")


def sweep_values(sweep: list[str]) -> tuple[str, list[float]]:
    """``["temperature", "0.7", "0.8"]`` → ``("temperature", [0.7, 0.8])``, or a usage error."""
    name, *values = sweep
    if name not in SWEEPABLE or not values:
        raise SettingsError(f"--sweep {' '.join(sweep)}: expected NAME VALUE... with NAME one of {SWEEPABLE}")
    try:
        return name, [float(value) for value in values]
    except ValueError:
        raise SettingsError(f"--sweep {' '.join(sweep)}: the values must be numbers") from None


def run_sweep(run, score, label: str, argv: list[str]) -> dict:
    """Score one run per value (``score(run) -> record``), write the JSON rows and the PNG; returns the result."""
    name, values = sweep_values(run.sweep)
    rows = []
    for value in values:
        record = score(dataclasses.replace(run, **{name: value}, sweep=None, output=None))
        rows.append({name: value, **record["summary"], "examples": record["samples"]["texts"][:2],
                     "protocol_notes": record["protocol_notes"]})
        print(f"{name} = {value}: Gen-PPL {rows[-1]['gen_ppl']}, entropy {rows[-1]['entropy']}", flush=True)
    result = {**run_header("generative", argv, dataclasses.asdict(run)), "evaluation": "generative_sweep",
              "model": label, "sweep": name,
              "rows": rows, "plot": str(Path(run.output).with_suffix(".png"))}
    write_json(result, run.output)
    plot_rows(rows, name, label, result["plot"])
    return result


def plot_rows(rows: list[dict], name: str, label: str, path: str) -> None:
    """Gen-PPL against entropy, one point per setting, labelled with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [row for row in rows if row["gen_ppl"] is not None and row["entropy"] is not None]
    if not scored:
        raise SettingsError("--sweep plots Gen-PPL against entropy: keep gen_ppl and entropy in --metrics")
    figure, axes = plt.subplots(figsize=(5, 4))
    axes.errorbar([row["entropy"] for row in scored], [row["gen_ppl"] for row in scored],
                  xerr=[row["entropy_standard_error"] or 0 for row in scored],
                  yerr=[row["gen_ppl_standard_error"] or 0 for row in scored], marker="o", capsize=3)
    for row in scored:
        axes.annotate(f"{name}={row[name]:g}", (row["entropy"], row["gen_ppl"]), textcoords="offset points",
                      xytext=(4, 4), fontsize=8)
    axes.margins(0.2)
    axes.set_xlabel("entropy of a sample's tokens (nats)")
    axes.set_ylabel("Gen-PPL")
    axes.set_title(f"{label}: {name} sweep\nGen-PPL under {scored[0]['reference_model'].split(' (')[0]}", fontsize=9)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
