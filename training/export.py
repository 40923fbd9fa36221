"""The run's deliverable: a model folder that `from_pretrained` loads (EMA weights, tokenizer, model card), and its
upload to the Hugging Face Hub."""

from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from torch import nn
from transformers import PreTrainedTokenizerBase

from training.errors import AssetUnavailableError
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


def check_hub_access(repo_id: str, api: HfApi | None = None) -> str:
    """Before training, not after it: the Hub answers, the token is valid and may write to `repo_id`'s namespace.
    Returns the account name."""
    api = api or HfApi()
    try:
        identity = api.whoami()
    except Exception as error:  # offline, no token, a bad token, no network: each its own exception type
        raise AssetUnavailableError(f"--push_to_hub {repo_id}: cannot reach the Hugging Face Hub as a logged-in user "
                                    f"({str(error).strip().splitlines()[0]}); log in with `hf auth login` or set "
                                    "HF_TOKEN, or drop --push_to_hub") from error
    role = identity.get("auth", {}).get("accessToken", {}).get("role")
    namespaces = {identity["name"], *(org["name"] for org in identity.get("orgs", []))}
    owner = repo_id.split("/")[0] if "/" in repo_id else identity["name"]
    if role == "read" or owner not in namespaces:
        raise AssetUnavailableError(f"--push_to_hub {repo_id}: the token of {identity['name']!r} "
                                    f"({role or 'unknown'} access) cannot write to {owner!r}; it may write to "
                                    f"{sorted(namespaces)} with a write token")
    return identity["name"]
