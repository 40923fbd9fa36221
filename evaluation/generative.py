"""Generative evaluation (paper Table 6): Gen-PPL, MAUVE and entropy of unconditional samples.

    python -m evaluation.generative MODEL --num_samples 5000 --reference_data openwebtext \
        [--reference_model gpt2-large --featurizer gpt2-large]

1. ``--num_samples`` samples of ``--sample_length`` tokens from the model (``evaluation.sampling``), decoded to text;
2. Gen-PPL under ``--reference_model`` (``evaluation.gen_ppl``: retokenise, 1024-token chunks, first-EOS rule,
   token-weighted);
3. entropy of each sample's own ids in nats, averaged (``evaluation.entropy``);
4. MAUVE against as many random ``--sample_length``-token blocks of the validation split of ``--reference_data``,
   features from ``--featurizer`` computed here (``evaluation.features``), scaling 5, n/10 buckets
   (``evaluation.mauve_score``).
Offline, use local folders or the aliases ``smollm2-135m`` (reference LM / last-token featurizer) and
``all-minilm-l6-v2`` (sentence-encoder featurizer); the JSON names the models behind every number.
"""

import argparse
import statistics
import sys

import torch

from .cli import DTYPES, add_common_arguments, default_output_path, print_config
from .corpus import choose_blocks, load_blocks
from .entropy import sample_entropies
from .features import FEATURE_KINDS, default_feature_kind, drop_empty, text_features
from .gen_ppl import generative_perplexity
from .loading import LoadedModel, load_encoder, load_evaluated_model, load_reference_lm
from .mauve_score import mauve_from_features
from .records import run_header, write_json
from .sampling import draw_samples

METRICS = ("gen_ppl", "entropy", "mauve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.generative", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--num_samples", type=int, default=5000, help="samples to draw (paper/ReMDM: 5000)")
    parser.add_argument("--sample_length", type=int, default=None, help="tokens per sample (default: the "
                        "model's context; OpenWebText models: 1024)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (TarFlowLM: scale "
                        "of the base noise)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling for causal LM baselines "
                        "(ReMDM's AR row uses 0.9); not for TarFlowLM")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS), help="what to compute")
    parser.add_argument("--reference_model", default="gpt2-large", help="causal LM for Gen-PPL: Hub id, local "
                        "folder, or 'smollm2-135m' offline")
    parser.add_argument("--reference_context_size", type=int, default=1024, help="Gen-PPL chunk length (GPT-2: "
                        "1024)")
    parser.add_argument("--retokenize_max_length", type=int, default=None, help="truncate retokenised samples "
                        "to this many reference tokens (MDLM: the sample length, the default); 0 = no truncation")
    parser.add_argument("--reference_data", default=None, help="corpus from which MAUVE's human references are "
                        "drawn, as training.data reads it ('openwebtext', 'tiny-literary', a folder or file); "
                        "MAUVE is skipped without it")
    parser.add_argument("--reference_split", default="validation", help="split of --reference_data to draw from")
    parser.add_argument("--score_references", action="store_true", help="also report Gen-PPL and entropy of the "
                        "reference texts (the 'Data' row of Table 6)")
    parser.add_argument("--featurizer", default="gpt2-large", help="MAUVE feature model: Hub id, local folder, "
                        "'smollm2-135m' or 'all-minilm-l6-v2' offline")
    parser.add_argument("--feature_kind", choices=("auto",) + FEATURE_KINDS, default="auto", help="last_token "
                        "(MAUVE's recipe) or mean_pooled (sentence encoders); auto picks mean_pooled for "
                        "sentence-transformers folders")
    parser.add_argument("--feature_max_length", type=int, default=None, help="featurizer truncation in tokens "
                        "(default 1024 for last_token, as MAUVE; 256 for mean_pooled)")
    parser.add_argument("--mauve_num_buckets", type=int, default=None, help="k-means clusters (default n/10)")
    return parser


def resolve_config(args, loaded: LoadedModel) -> dict:
    """The run's settings with every default made concrete."""
    config = loaded.model.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions")
    sample_length = args.sample_length or (context if loaded.is_latent else context - 1)
    retokenize = sample_length if args.retokenize_max_length is None else args.retokenize_max_length or None
    metrics = list(args.metrics)
    if "mauve" in metrics and args.reference_data is None:
        print("MAUVE skipped: no --reference_data given", file=sys.stderr)
        metrics.remove("mauve")
    return {**vars(args), "sample_length": sample_length, "retokenize_max_length": retokenize, "metrics": metrics}


def reference_blocks(config: dict, loaded: LoadedModel) -> dict:
    """``num_samples`` random blocks of ``sample_length`` tokens of the validation split (evaluated model's
    tokenizer), decoded: MAUVE's human references, drawn as ReMDM draws them from its validation loader."""
    blocks = load_blocks(config["reference_data"], config["reference_split"], loaded.tokenizer,
                         config["sample_length"])
    positions, with_replacement = choose_blocks(len(blocks), config["num_samples"], config["seed"])
    ids = blocks.take(positions)
    return {"ids": ids, "texts": loaded.tokenizer.batch_decode(ids.tolist()), "blocks_available": len(blocks),
            "drawn_with_replacement": with_replacement}


def gen_ppl_section(texts: list[str], reference: LoadedModel, config: dict) -> dict:
    result = generative_perplexity(texts, reference.model, reference.tokenizer,
                                   context_size=config["reference_context_size"],
                                   max_length=config["retokenize_max_length"], batch_size=config["batch_size"],
                                   device=config["device"])
    return {**result.to_dict(), "reference_model": reference.label}


def entropy_section(ids: torch.Tensor) -> dict:
    entropies = sample_entropies(ids)
    return {"mean": statistics.fmean(entropies), "unit": "nats", "per_sample": entropies}


def featurize(texts: list[str], featurizer: LoadedModel, kind: str, config: dict):
    kept, dropped = drop_empty(texts)
    features = text_features(kept, featurizer.model, featurizer.tokenizer, kind, config["feature_max_length"],
                             config["batch_size"], config["device"])
    return features, dropped


def mauve_section(sample_texts: list[str], reference_texts: list[str], featurizer: LoadedModel, config: dict) -> dict:
    """MAUVE of the samples (q) against the references (p), ReMDM's order of arguments."""
    kind = config["feature_kind"] if config["feature_kind"] != "auto" else default_feature_kind(featurizer.path)
    p_features, p_dropped = featurize(reference_texts, featurizer, kind, config)
    q_features, q_dropped = featurize(sample_texts, featurizer, kind, config)
    result = mauve_from_features(p_features, q_features, num_buckets=config["mauve_num_buckets"])
    return {**result, "featurizer": featurizer.label, "feature_kind": kind,
            "empty_texts_dropped": {"references": p_dropped, "samples": q_dropped}}


def load_featurizer(config: dict, reference: LoadedModel | None) -> LoadedModel:
    """The MAUVE featurizer; the reference LM's own base model is reused when both are the same model."""
    if reference is not None and config["featurizer"] == config["reference_model"]:
        return LoadedModel(reference.model.base_model, reference.tokenizer, reference.source, reference.path,
                           reference.label)
    return load_encoder(config["featurizer"], config["device"], DTYPES[config["dtype"]])


def protocol_notes(config: dict, loaded: LoadedModel, references: dict | None) -> list[str]:
    """How this run departs from, or pins down, the MDLM/ReMDM protocol behind the paper's Table 6."""
    notes = [f"samples: {config['num_samples']} x {config['sample_length']} tokens, temperature "
             f"{config['temperature']}, top_p {config['top_p']}, torch seed {config['seed']}",
             "Gen-PPL: padding is never scored (MDLM pads with EOS and may score one pad as a first EOS when "
             f"batch size > 1); retokenised samples truncated to {config['retokenize_max_length']} tokens"]
    if not loaded.is_latent:
        notes.append("causal LM samples start after a BOS/EOS start token that is not part of the sample; EOS does "
                     "not stop generation")
    if references is not None and references["drawn_with_replacement"]:
        notes.append(f"only {references['blocks_available']} reference blocks exist: references were drawn with "
                     "replacement")
    return notes


def evaluate_texts(texts: list[str], ids: torch.Tensor, reference: LoadedModel | None, config: dict) -> dict:
    """Gen-PPL and entropy of one set of texts (samples, or references for the 'Data' row)."""
    section = {"texts": texts}
    if reference is not None:
        section["gen_ppl"] = gen_ppl_section(texts, reference, config)
    if "entropy" in config["metrics"]:
        section["entropy"] = entropy_section(ids)
    return section


def summary(record: dict) -> dict:
    samples = record["samples"]
    return {"gen_ppl": samples.get("gen_ppl", {}).get("gen_ppl"), "entropy": samples.get("entropy", {}).get("mean"),
            "mauve": (record.get("mauve") or {}).get("mauve"),
            "reference_model": samples.get("gen_ppl", {}).get("reference_model"),
            "featurizer": (record.get("mauve") or {}).get("featurizer")}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    loaded = load_evaluated_model(args.model, args.device, DTYPES[args.dtype])
    config = resolve_config(args, loaded)
    config["output"] = config["output"] or default_output_path("generative", loaded.label)
    print_config("generative", config)
    reference = load_reference_lm(config["reference_model"], args.device, DTYPES[args.dtype]) \
        if "gen_ppl" in config["metrics"] else None
    torch.manual_seed(args.seed)  # after loading, so that the samples depend on the seed alone
    ids = draw_samples(loaded, args.num_samples, config["sample_length"], args.batch_size, args.temperature,
                       args.top_p, args.device)
    record = {**run_header("generative", argv, config), "model": loaded.describe(),
              "samples": evaluate_texts(loaded.tokenizer.batch_decode(ids.tolist()), ids, reference, config)}
    references = reference_blocks(config, loaded) if config["reference_data"] else None
    if references is not None and args.score_references:
        record["references"] = evaluate_texts(references["texts"], references["ids"], reference, config)
    if "mauve" in config["metrics"]:
        featurizer = load_featurizer(config, reference)
        record["mauve"] = mauve_section(record["samples"]["texts"], references["texts"], featurizer, config)
    record["protocol_notes"] = protocol_notes(config, loaded, references)
    record["summary"] = summary(record)
    write_json(record, config["output"])
    print(summary_line(record), flush=True)
    return record


def summary_line(record: dict) -> str:
    s = record["summary"]
    parts = [f"Gen-PPL {s['gen_ppl']:.2f} ({s['reference_model']})" if s["gen_ppl"] is not None else None,
             f"MAUVE {s['mauve']:.4f} ({s['featurizer']})" if s["mauve"] is not None else None,
             f"entropy {s['entropy']:.3f} nats" if s["entropy"] is not None else None]
    return (f"{record['model']['label']}, {record['config']['num_samples']} samples: "
            f"{', '.join(p for p in parts if p)} -> {record['config']['output']}")


if __name__ == "__main__":
    main()
