"""The model card written beside the exported weights: ``model_cards/template.md`` filled with the run's
configuration, data, steps and measured metrics (`huggingface_hub.ModelCard`, Jinja)."""

from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "template.md"
SHIPPED_CORPUS_NOTE = ("tiny-literary is a 2.4M-character public-domain corpus shipped for smoke tests: its numbers "
                       "are not comparable with text8 or OpenWebText results")

_USAGE = {  # AutoTokenizer reads config.json first, whose model code needs the same trust as the model
    "tarflow": ('from transformers import AutoModel, AutoTokenizer\n\n'
                'model = AutoModel.from_pretrained("{folder}", trust_remote_code=True)\n'
                'tokenizer = AutoTokenizer.from_pretrained("{folder}", trust_remote_code=True)\n'
                'ids = model.generate(max_new_tokens={length}, num_return_sequences=2, seed=0)\n'
                'print(tokenizer.batch_decode(ids))'),
    "gpt2": ('from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
             'model = AutoModelForCausalLM.from_pretrained("{folder}")\n'
             'tokenizer = AutoTokenizer.from_pretrained("{folder}")'),
}
_SUMMARY = {
    "tarflow": "A TarFlowLM model (Zhang et al., NeurIPS 2025): tokens are encoded to Gaussian latents whose prior is "
               "a stack of transformer autoregressive flows; the decoder is tied to the encoder codebook.",
    "gpt2": "The autoregressive baseline of a TarFlowLM run: a GPT-2 of the same depth, width and vocabulary, "
            "trained with the same script, data and steps.",
}


def metric_rows(results: dict) -> list[dict]:
    validation = results["validation"]
    rows = [{"split": "validation", "name": name, "value": f"{value:.4f}"} for name, value in validation.items()]
    if results.get("unigram_entropy_bits") is not None:
        rows.append({"split": "train", "name": "unigram entropy (bits/token, the floor to beat)",
                     "value": f"{results['unigram_entropy_bits']:.4f}"})
    return rows


def card_data(results: dict) -> ModelCardData:
    metric = "bpc" if "bpc" in results["validation"] else "ppl"
    evaluation = EvalResult(task_type="text-generation", dataset_type=results["data"]["dataset"],
                            dataset_name=results["data"]["dataset"], dataset_split="validation",
                            metric_type=metric, metric_value=round(results["validation"][metric], 4))
    return ModelCardData(language="en", license="apache-2.0", library_name="transformers",
                         tags=["tarflowlm", "normalizing-flow", "language-model", results["model"]],
                         model_name=results["model_name"], eval_results=[evaluation])


def model_location(results: dict, settings: dict) -> str:
    """Where a reader of the card loads the model from: the Hub repository when the run pushes there."""
    return settings.get("push_to_hub") or results["output_dir"]


def build_model_card(results: dict, settings: dict, architecture: dict) -> ModelCard:
    """`results` as `training/run.py` writes them to results.json; `settings` the resolved training settings."""
    data = results["data"]
    metric_note = ("The TarFlowLM value is the negative ELBO with one z sample per block: an upper bound on the "
                   "negative log-likelihood." if results["model"] == "tarflow" else "Exact negative log-likelihood.")
    return ModelCard.from_template(
        card_data(results), template_path=str(TEMPLATE), model_name=results["model_name"],
        summary=_SUMMARY[results["model"]], preset=settings.get("config") or "custom", steps=results["steps"],
        tokens=f"{results['tokens']:,}", skipped_steps=results["skipped_steps"], ema_decay=settings["ema_decay"],
        usage=_USAGE[results["model"]].format(folder=model_location(results, settings), length=data["block_size"]),
        metric_rows=metric_rows(results), metric_note=metric_note, dataset=data["dataset"],
        tokenizer=data["tokenizer"], block_size=data["block_size"],
        data_note=SHIPPED_CORPUS_NOTE if data["dataset"] == "tiny-literary" else "",
        architecture=yaml.safe_dump(architecture, sort_keys=False, default_flow_style=None).strip(),
        stages=results["stages"], training_settings=yaml.safe_dump(settings, sort_keys=False).strip(),
        samples=results.get("samples") or [], seed=settings["seed"])
