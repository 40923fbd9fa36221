r"""A look inside the flow: the latent after every inverse layer, decoded to text (the paper's intermediate
decoding, App. G / Fig. 6), the layer-by-layer edits as an HTML page, and the App. G metrics as a PNG plot.

`generate(..., output_hidden_states=True)` returns the levels [h^(L) = u, h^(L−1), .., h^(0) = z]; inverse layer ℓ
edits level h^(ℓ) into h^(ℓ−1). Each level is decoded by the tied decoder, argmax_k log N_k(h_t) — only z is a
codebook latent, but the paper decodes every level the same way to see coarse-to-fine refinement.

Metrics per level and sequence b (App. G), reported as mean and standard deviation over the batch:
    mean L2 norm             (1/T) Σ_t ‖h_{b,t}‖₂
    mean pairwise cosine     mean over t1 < t2 of ⟨h_{t1}, h_{t2}⟩ / (‖h_{t1}‖ ‖h_{t2}‖ + ε_cos)
    participation ratio      (Σ_i λ_i)² / (Σ_i λ_i² + ε_PR), λ the eigenvalues of the covariance of the
                             mean-centred T×d token matrix (1 = one direction used, d = all equally)
    centroid movement        ‖mean_t h^(ℓ−1) − mean_t h^(ℓ)‖₂, for each inverse layer
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

import torch

EPS_COSINE = 1e-9
EPS_PARTICIPATION = 1e-12


def level_names(num_levels: int) -> list[str]:
    """Names of [h^(L) = u, .., h^(0) = z] for L + 1 levels."""
    top = num_levels - 1
    return [("u = " if i == 0 else "z = " if i == top else "") + f"h^({top - i})" for i in range(num_levels)]


@torch.no_grad()
def decode_levels(model, hidden_states) -> list[torch.LongTensor]:
    """Argmax tokens (B, T) of every level under the tied decoder p(x_t | h_t)."""
    return [model.decode(h.to(model.dtype)).argmax(-1) for h in hidden_states]


@torch.no_grad()
def latent_metrics(hidden_states) -> dict[str, dict[str, list[float]]]:
    """The App. G metrics of every level: {metric: {"mean": [...], "std": [...]}}, one entry per level (per inverse
    layer for `centroid_movement`)."""
    levels = [h.double() for h in hidden_states]
    per_sequence = {
        "mean_l2_norm": [h.norm(dim=-1).mean(-1) for h in levels],
        "mean_pairwise_cosine": [_mean_pairwise_cosine(h) for h in levels],
        "participation_ratio": [_participation_ratio(h) for h in levels],
        "centroid_movement": [(after.mean(1) - before.mean(1)).norm(dim=-1)
                              for before, after in zip(levels, levels[1:])],
    }
    return {name: {"mean": [float(v.mean()) for v in values],
                   "std": [float(v.std(unbiased=False)) for v in values]}
            for name, values in per_sequence.items()}


def _mean_pairwise_cosine(h: torch.Tensor) -> torch.Tensor:
    norms = h.norm(dim=-1)
    cosine = (h @ h.transpose(1, 2)) / (norms.unsqueeze(-1) * norms.unsqueeze(-2) + EPS_COSINE)
    pairs = torch.triu(torch.ones_like(cosine[0], dtype=torch.bool), diagonal=1)
    return cosine[:, pairs].mean(-1)


def _participation_ratio(h: torch.Tensor) -> torch.Tensor:
    centred = h - h.mean(1, keepdim=True)
    covariance = centred.transpose(1, 2) @ centred / max(h.shape[1] - 1, 1)
    eigenvalues = torch.linalg.eigvalsh(covariance).clamp_min(0)
    return eigenvalues.sum(-1).square() / (eigenvalues.square().sum(-1) + EPS_PARTICIPATION)


def edits_html(token_levels: list[torch.Tensor], token_to_text: Callable[[int], str] | None = None,
               sequence: int = 0, title: str = "TarFlowLM: layer-by-layer edits") -> str:
    """An HTML page with, for every inverse layer, its decoded input and output for one sequence; the tokens the
    layer changed are highlighted (green in its input, red in its output), as in the paper's Fig. 6."""
    token_to_text = token_to_text or str
    names = level_names(len(token_levels))
    rows = [f"<h1>{html.escape(title)}</h1>", f"<p>sequence {sequence}; {len(token_levels) - 1} inverse layers, "
            "from the base noise u down to the latent z</p>"]
    for index, (before, after) in enumerate(zip(token_levels, token_levels[1:])):
        before, after = before[sequence].tolist(), after[sequence].tolist()
        changed = [a != b for a, b in zip(before, after)]
        rows.append(f"<h2>inverse layer {len(token_levels) - 1 - index}: {names[index]} → {names[index + 1]} "
                    f"({sum(changed)} of {len(changed)} tokens changed)</h2>")
        rows.append(_tokens_html(before, changed, token_to_text, "input"))
        rows.append(_tokens_html(after, changed, token_to_text, "output"))
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto} .tokens{font-family:monospace;"
             "white-space:pre-wrap;line-height:1.8} .input{background:#b7f0b1} .output{background:#f6b3b3}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(rows)}</body></html>\n")


def _tokens_html(tokens: list[int], changed: list[bool], token_to_text: Callable[[int], str], side: str) -> str:
    spans = [f"<span class='{side}'>{html.escape(token_to_text(t))}</span>" if c else html.escape(token_to_text(t))
             for t, c in zip(tokens, changed)]
    return f"<p><b>{side}</b></p><div class='tokens'>{''.join(spans)}</div>"


def plot_latent_metrics(metrics: dict[str, dict[str, list[float]]], path: str | Path) -> Path:
    """A PNG with one panel per App. G metric (mean ± std over the batch) against the level."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - matplotlib is an optional dependency
        raise ImportError("plot_latent_metrics needs matplotlib: pip install matplotlib") from error
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for axis, (name, values) in zip(axes, metrics.items()):
        mean, std = torch.tensor(values["mean"]), torch.tensor(values["std"])
        steps = range(len(mean))
        axis.errorbar(steps, mean, yerr=std, marker="o", capsize=3)
        labels = level_names(len(mean)) if name != "centroid_movement" else [
            f"layer {len(mean) - i}" for i in steps]
        axis.set_xticks(list(steps), labels, rotation=30, fontsize=8)
        axis.set_title(name.replace("_", " "))
    figure.suptitle("latent after each inverse layer (App. G)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def write_flow_inspection(model, output, directory: str | Path, token_to_text: Callable[[int], str] | None = None,
                          sequence: int = 0) -> tuple[Path, Path]:
    """From a `generate(..., output_hidden_states=True)` output, write `edits.html` and `metrics.png` (and return
    their paths) in `directory`."""
    if output.hidden_states is None:
        raise ValueError("the generate output has no hidden_states: call generate(..., output_hidden_states=True)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / "edits.html"
    page.write_text(edits_html(decode_levels(model, output.hidden_states), token_to_text, sequence))
    return page, plot_latent_metrics(latent_metrics(output.hidden_states), directory / "metrics.png")


__all__ = ["level_names", "decode_levels", "latent_metrics", "edits_html", "plot_latent_metrics",
           "write_flow_inspection"]
