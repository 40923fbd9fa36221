"""The run's deliverable: a model folder that `from_pretrained` loads (EMA weights, tokenizer, model card), and its
upload to the Hugging Face Hub."""

from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from torch import nn
from transformers import PreTrainedTokenizerBase

from training.guards import check_finite_parameters

RUN_ARTIFACTS = ["checkpoints/**", "logs/**", "*.lock"]
"""What the output folder holds besides the model and is not uploaded (resumable state, TensorBoard events)."""


def export_model_folder(model: nn.Module, tokenizer: PreTrainedTokenizerBase, card: ModelCard,
                        folder: str | Path) -> Path:
    """``save_pretrained`` of the model (config, safetensors, and for TarFlowLM its code) and of the tokenizer,
    plus the card as README.md, so ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` and
    ``AutoTokenizer.from_pretrained(folder)`` work."""
    check_finite_parameters(model, f"export to {folder}")
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    card.save(folder / "README.md")
    return folder


def push_model_folder(folder: str | Path, repo_id: str, api: HfApi | None = None) -> str:
    """Create `repo_id` if needed and upload the model folder, run artifacts excluded; returns the commit URL."""
    api = api or HfApi()
    api.create_repo(repo_id, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               ignore_patterns=RUN_ARTIFACTS, commit_message="Upload TarFlowLM training run")
    return str(commit)
