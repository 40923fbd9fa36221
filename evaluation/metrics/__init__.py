"""The Table 6 metrics of arXiv 2507.00425 as `evaluate` modules, one folder each (``evaluate.load(folder)``):
``gen_ppl`` (Gen-PPL as MDLM computes it), ``sample_entropy`` (ReMDM's unigram entropy) and ``remdm_mauve`` (MAUVE
with ReMDM's settings). Each folder holds the script ``<name>/<name>.py`` and the modules it imports, which
``evaluate.load`` copies with it, so the same folder works from this repository and from the Hub."""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
NAMES = ("gen_ppl", "sample_entropy", "remdm_mauve")


def load(name: str):
    """``evaluate.load`` of this repository's module ``name`` (one of `NAMES`), by path: works offline."""
    if name not in NAMES:
        raise ValueError(f"unknown metric {name!r}; expected one of {NAMES}")
    import evaluate  # about 6 s to import: only where a metric is computed

    return evaluate.load(str(FOLDER / name))
