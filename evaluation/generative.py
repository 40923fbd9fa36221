"""Generative evaluation (paper Table 6): Gen-PPL, MAUVE and entropy of unconditional samples.

    python -m evaluation.generative MODEL --reference_data tiny-literary          # quick: 48 samples, SmolLM2
    python -m evaluation.generative MODEL --reference_data openwebtext --protocol paper    # 5000, GPT-2 Large
    python -m evaluation.generative MODEL --sweep temperature 0.7 0.8 0.9 1.0 --metrics gen_ppl entropy

1. ``--num_samples`` samples of ``--sample_length`` tokens from the model (``evaluation.sampling``), decoded to text;
2. Gen-PPL under ``--reference_model`` (the ``evaluate`` module ``evaluation/metrics/gen_ppl``: retokenise,
   1024-token chunks, first-EOS rule, token-weighted);
3. entropy of each sample's own ids in nats, averaged (``evaluation/metrics/sample_entropy``);
4. MAUVE against as many random ``--sample_length``-token blocks of the validation split of ``--reference_data``,
   features from ``--featurizer`` (default: the reference model, loaded once) computed here
   (``evaluation.features``), scaling 5, n/10 buckets (``evaluation/metrics/remdm_mauve``).
``--sweep NAME VALUE...`` repeats 1-3 (and 4) once per value of ``temperature``, ``top_p`` or ``noise_temperature``
(``evaluation.sweep``): one JSON row per setting and a PNG of Gen-PPL against entropy.
Offline, use local folders or the aliases ``smollm2-135m`` (reference LM / last-token featurizer; the quick
protocol's default) and ``all-minilm-l6-v2`` (sentence-encoder featurizer); the JSON names the models behind every
number.
"""

import sys
from dataclasses import asdict, dataclass, field

import torch

from .cli import (EvaluationArguments, SettingsError, default_output_path, parse_arguments, print_config,
                  require_at_least, run_command)
from .corpus import choose_blocks, load_blocks
from . import metrics
from .features import FEATURE_KINDS, default_feature_kind, drop_empty, text_features
from .loading import LoadedModel, load_encoder, load_evaluated_model, load_reference_lm
from .records import run_header, write_json
from .sampling import draw_samples
from .sweep import SWEEPABLE, run_sweep, sweep_values

METRICS = ("gen_ppl", "entropy", "mauve")
# Settings each --protocol gives to the flags left unset. Paper: 5000 samples scored by GPT-2 Large (Table 6,
# after ReMDM). Quick: minutes on a laptop CPU, scored by SmolLM2-135M, which installs from PyPI (no Hub needed).
PROTOCOLS = {
    "quick": {"num_samples": 48, "reference_model": "smollm2-135m"},
    "paper": {"num_samples": 5000, "reference_model": "gpt2-large"},
}


@dataclass(kw_only=True)
class GenerativeArguments(EvaluationArguments):
    """The flags of ``python -m evaluation.generative``; None means "the protocol's (or the model's) value"."""

    num_samples: int | None = field(default=None, metadata={"help": "samples to draw (quick: "
                                    f"{PROTOCOLS['quick']['num_samples']}; paper/ReMDM: 5000)"})
    sample_length: int | None = field(default=None, metadata={"help": "tokens per sample (default: the model's "
                                      "context; OpenWebText models: 1024)"})
    temperature: float = field(default=1.0, metadata={"help": "next-token temperature, as generate takes it "
                               "(TarFlowLM with a Mix-d first layer: on π_t; other stacks: on the final draw)"})
    noise_temperature: float = field(default=1.0, metadata={"help": "TarFlowLM: τ, the scale of the base noise u"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling (ReMDM's AR row uses 0.9; "
                                "TarFlowLM with a Mix-d first layer: on π_t)"})
    sweep: list[str] | None = field(default=None, metadata={"help": "NAME VALUE...: one scored run per value of "
                                    f"{'/'.join(SWEEPABLE)}, one JSON row each, and a PNG of Gen-PPL against "
                                    "entropy (e.g. --sweep temperature 0.7 0.8 0.9 1.0)"})
    metrics: list[str] = field(default_factory=lambda: list(METRICS), metadata={"choices": METRICS,
                               "help": "what to compute"})
    reference_model: str | None = field(default=None, metadata={"help": "causal LM for Gen-PPL: Hub id, local "
                                        "folder, or 'smollm2-135m' offline (quick: smollm2-135m; paper: "
                                        "gpt2-large)"})
    reference_context_size: int = field(default=1024, metadata={"help": "Gen-PPL chunk length (GPT-2: 1024)"})
    retokenize_max_length: int | None = field(default=None, metadata={"help": "truncate retokenised samples to "
                                              "this many reference tokens (MDLM: the sample length, the default); "
                                              "0 = no truncation"})
    reference_data: str | None = field(default=None, metadata={"help": "corpus from which MAUVE's human "
                                       "references are drawn, as training.data reads it ('openwebtext', "
                                       "'tiny-literary', a folder or file); MAUVE is skipped without it"})
    reference_split: str = field(default="validation", metadata={"help": "split of --reference_data to draw from"})
    score_references: bool = field(default=False, metadata={"help": "also report Gen-PPL and entropy of the "
                                   "reference texts (the 'Data' row of Table 6)"})
    featurizer: str | None = field(default=None, metadata={"help": "MAUVE feature model (default: the reference "
                                   "model): Hub id, local folder, 'smollm2-135m' or 'all-minilm-l6-v2' offline"})
    feature_kind: str = field(default="auto", metadata={"choices": ("auto",) + FEATURE_KINDS, "help": "last_token "
                              "(MAUVE's recipe) or mean_pooled (sentence encoders); auto picks mean_pooled for "
                              "sentence-transformers folders"})
    feature_max_length: int | None = field(default=None, metadata={"help": "featurizer truncation in tokens "
                                           "(default 1024 for last_token, as MAUVE; 256 for mean_pooled)"})
    mauve_num_buckets: int | None = field(default=None, metadata={"help": "k-means clusters (default n/10)"})

    def __post_init__(self):
        super().__post_init__()
        for name, minimum in (("num_samples", 1), ("sample_length", 1), ("reference_context_size", 2),
                              ("retokenize_max_length", 0), ("feature_max_length", 1), ("mauve_num_buckets", 1)):
            require_at_least(self, name, minimum)
        if not self.temperature > 0:
            raise SettingsError(f"--temperature {self.temperature}: must be > 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SettingsError(f"--top_p {self.top_p}: must be in (0, 1]")
        if not self.noise_temperature >= 0:
            raise SettingsError(f"--noise_temperature {self.noise_temperature}: must be >= 0")
        if self.sweep:
            sweep_values(self.sweep)


@dataclass(kw_only=True)
class GenerativeRun(GenerativeArguments):
    """One run's settings with every default made concrete, validated against the model: the JSON's ``config``."""

    model: str = field(metadata={"help": "the evaluated model, as given"})


def protocol_settings(settings: GenerativeArguments) -> dict:
    """Sample count and scoring models: the flags given, else the protocol's; the featurizer defaults to the
    reference model (one model loaded, as MAUVE's GPT-2 Large features in the paper)."""
    preset = PROTOCOLS[settings.protocol]
    reference_model = settings.reference_model or preset["reference_model"]
    return {"num_samples": settings.num_samples or preset["num_samples"], "reference_model": reference_model,
            "featurizer": settings.featurizer or reference_model}


def resolve_run(model: str, settings: GenerativeArguments, loaded: LoadedModel) -> GenerativeRun:
    """The run's settings with every default made concrete (what the JSON records), validated against the model."""
    config = loaded.model.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions")
    context -= 0 if loaded.is_latent else 1  # a causal LM's samples follow a start token
    sample_length = settings.sample_length or context
    if sample_length > context:
        raise SettingsError(f"--sample_length {sample_length}: must be <= {context}, the model's context in tokens")
    retokenize = sample_length if settings.retokenize_max_length is None else settings.retokenize_max_length or None
    metrics = list(dict.fromkeys(settings.metrics))
    if "mauve" in metrics and settings.reference_data is None:
        print("MAUVE skipped: pass --reference_data, the corpus whose validation blocks are the human references "
              "(e.g. the model's training data)", file=sys.stderr)
        metrics.remove("mauve")
    return GenerativeRun(**{**asdict(settings), **protocol_settings(settings), "sample_length": sample_length,
                            "retokenize_max_length": retokenize, "metrics": metrics,
                            "output": settings.output or default_output_path(
                                "generative", loaded.label, *(["sweep-" + settings.sweep[0]] if settings.sweep else []))},
                         model=model)


def reference_blocks(run: GenerativeRun, loaded: LoadedModel) -> dict:
    """``num_samples`` random blocks of ``sample_length`` tokens of the validation split (evaluated model's
    tokenizer), decoded: MAUVE's human references, drawn as ReMDM draws them from its validation loader."""
    blocks = load_blocks(run.reference_data, run.reference_split, loaded.tokenizer, run.sample_length)
    positions, with_replacement = choose_blocks(len(blocks), run.num_samples, run.seed)
    ids = blocks.take(positions)
    return {"ids": ids, "texts": loaded.tokenizer.batch_decode(ids.tolist()), "blocks_available": len(blocks),
            "drawn_with_replacement": with_replacement}


def gen_ppl_section(texts: list[str], reference: LoadedModel, run: GenerativeRun) -> dict:
    """Gen-PPL by the `gen_ppl` evaluate module (``evaluation/metrics/gen_ppl``)."""
    result = metrics.load("gen_ppl").compute(
        predictions=texts, model=reference.model, tokenizer=reference.tokenizer,
        context_size=run.reference_context_size, max_length=run.retokenize_max_length, batch_size=run.batch_size,
        device=run.device)
    return {**result, "reference_model": reference.label}


def entropy_section(ids: torch.Tensor) -> dict:
    """Entropy of each sample's own ids by the `sample_entropy` evaluate module."""
    return metrics.load("sample_entropy").compute(predictions=ids.tolist())


def featurize(texts: list[str], featurizer: LoadedModel, kind: str, run: GenerativeRun):
    kept, dropped = drop_empty(texts)
    features = text_features(kept, featurizer.model, featurizer.tokenizer, kind, run.feature_max_length,
                             run.batch_size, run.device)
    return features, dropped


def mauve_section(sample_texts: list[str], reference_texts: list[str], featurizer: LoadedModel,
                  run: GenerativeRun) -> dict:
    """MAUVE of the samples (q) against the references (p), ReMDM's order of arguments."""
    kind = run.feature_kind if run.feature_kind != "auto" else default_feature_kind(featurizer.path)
    p_features, p_dropped = featurize(reference_texts, featurizer, kind, run)
    q_features, q_dropped = featurize(sample_texts, featurizer, kind, run)
    result = metrics.load("remdm_mauve").compute(predictions=q_features.tolist(), references=p_features.tolist(),
                                                 num_buckets=run.mauve_num_buckets)
    return {**result, "featurizer": featurizer.label, "feature_kind": kind,
            "empty_texts_dropped": {"references": p_dropped, "samples": q_dropped}}


def load_featurizer(run: GenerativeRun, reference: LoadedModel | None) -> LoadedModel:
    """The MAUVE featurizer; the reference LM's own base model is reused when both are the same model."""
    if reference is not None and run.featurizer == run.reference_model:
        return LoadedModel(reference.model.base_model, reference.tokenizer, reference.source, reference.path,
                           reference.label)
    return load_encoder(run.featurizer, run.device, run.torch_dtype)


def protocol_notes(run: GenerativeRun, loaded: LoadedModel, references: dict | None) -> list[str]:
    """How this run departs from, or pins down, the MDLM/ReMDM protocol behind the paper's Table 6."""
    notes = [f"samples: {run.num_samples} x {run.sample_length} tokens, temperature {run.temperature}, top_p "
             f"{run.top_p}, noise temperature {run.noise_temperature}, torch seed {run.seed}",
             "Gen-PPL: padding is never scored (MDLM pads with EOS and may score one pad as a first EOS when "
             f"batch size > 1); retokenised samples truncated to {run.retokenize_max_length} tokens"]
    if not loaded.is_latent:
        notes.append("causal LM samples start after a BOS/EOS start token that is not part of the sample; EOS does "
                     "not stop generation")
    if references is not None and references["drawn_with_replacement"]:
        notes.append(f"only {references['blocks_available']} reference blocks exist: references were drawn with "
                     "replacement")
    return notes


def evaluate_texts(texts: list[str], ids: torch.Tensor, reference: LoadedModel | None, run: GenerativeRun) -> dict:
    """Gen-PPL and entropy of one set of texts (samples, or references for the 'Data' row)."""
    section = {"texts": texts}
    if reference is not None:
        section["gen_ppl"] = gen_ppl_section(texts, reference, run)
    if "entropy" in run.metrics:
        section["entropy"] = entropy_section(ids)
    return section


def summary(record: dict) -> dict:
    gen_ppl, entropy = record["samples"].get("gen_ppl", {}), record["samples"].get("entropy", {})
    mauve = record.get("mauve") or {}
    return {"gen_ppl": gen_ppl.get("gen_ppl"), "gen_ppl_standard_error": gen_ppl.get("standard_error"),
            "entropy": entropy.get("mean"), "entropy_standard_error": entropy.get("standard_error"),
            "mauve": mauve.get("mauve"), "reference_model": gen_ppl.get("reference_model"),
            "featurizer": mauve.get("featurizer")}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    model, settings = parse_arguments(GenerativeArguments, argv, "python -m evaluation.generative", __doc__)
    loaded = load_evaluated_model(model, settings.device, settings.torch_dtype, settings.trust_remote_code)
    run = resolve_run(model, settings, loaded)
    print_config("generative", asdict(run))
    references = reference_blocks(run, loaded) if run.reference_data else None  # before sampling: fails fast
    reference = load_reference_lm(run.reference_model, run.device, run.torch_dtype) \
        if "gen_ppl" in run.metrics else None
    if run.sweep:
        return run_sweep(run, lambda setting: score_samples(setting, argv, loaded, reference, references),
                         loaded.label, argv)
    record = score_samples(run, argv, loaded, reference, references)
    write_json(record, run.output)
    print(summary_line(record), flush=True)
    return record


def score_samples(run: GenerativeRun, argv: list[str], loaded: LoadedModel, reference: LoadedModel | None,
                  references: dict | None) -> dict:
    """The record of one setting: its samples drawn and scored (and the `references` blocks, with MAUVE)."""
    torch.manual_seed(run.seed)  # after loading, so that the samples depend on the seed alone
    ids = draw_samples(loaded, run.num_samples, run.sample_length, run.batch_size, run.temperature, run.top_p,
                       run.noise_temperature)
    record = {**run_header("generative", argv, asdict(run)), "model": loaded.describe(),
              "samples": evaluate_texts(loaded.tokenizer.batch_decode(ids.tolist()), ids, reference, run)}
    if references is not None and run.score_references:
        record["references"] = evaluate_texts(references["texts"], references["ids"], reference, run)
    if "mauve" in run.metrics:
        featurizer = load_featurizer(run, reference)
        record["mauve"] = mauve_section(record["samples"]["texts"], references["texts"], featurizer, run)
    record["protocol_notes"] = protocol_notes(run, loaded, references)
    record["summary"] = summary(record)
    return record


def summary_line(record: dict) -> str:
    s = record["summary"]
    plus_minus = {name: f" ± {s[name + '_standard_error']:.{digits}f}" if s[name + "_standard_error"] else ""
                  for name, digits in (("gen_ppl", 2), ("entropy", 3))}
    parts = [f"Gen-PPL {s['gen_ppl']:.2f}{plus_minus['gen_ppl']} ({s['reference_model']})"
             if s["gen_ppl"] is not None else None,
             f"MAUVE {s['mauve']:.4f} ({s['featurizer']})" if s["mauve"] is not None else None,
             f"entropy {s['entropy']:.3f}{plus_minus['entropy']} nats" if s["entropy"] is not None else None]
    return (f"{record['model']['label']}, {record['config']['num_samples']} samples: "
            f"{', '.join(p for p in parts if p)} (± one standard error) -> {record['config']['output']}")


if __name__ == "__main__":
    sys.exit(run_command(main))
