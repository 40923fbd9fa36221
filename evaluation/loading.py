"""Load the models an evaluation needs, from a local folder, an offline alias or a Hugging Face Hub id.

The evaluated model is either a TarFlowLM folder (``config.model_type == "tarflow"``: a latent model, scored by its
NELBO) or any ``transformers`` causal LM (an autoregressive baseline, scored by its exact NLL). Reference models
(Gen-PPL) are causal LMs and featurizers (MAUVE) are encoders or causal LMs. Hub ids stay the defaults, as in the
papers; where the Hub cannot be reached they fail fast with a message naming the alternatives.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from training.errors import UsageError

from .offline_assets import OFFLINE_ASSETS, locate_offline_asset

LATENT_MODEL_TYPES = frozenset({"tarflow"})
TRAINING_MODEL_SUBFOLDER = "model"  # where training/run.py exports the model inside its --output_dir


class ModelUnavailableError(UsageError, OSError):
    """A model name that is neither a local model folder, an installed offline alias, nor a reachable Hub id."""


@dataclass
class LoadedModel:
    """A model, its tokenizer, and how to name it in results (``label`` says which model produced a number)."""

    model: torch.nn.Module
    tokenizer: object
    source: str
    path: str
    label: str

    @property
    def is_latent(self) -> bool:
        return getattr(self.model.config, "model_type", None) in LATENT_MODEL_TYPES

    def describe(self) -> dict:
        return {
            "name": self.source,
            "path": self.path,
            "label": self.label,
            "model_type": getattr(self.model.config, "model_type", None),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
        }


def names_a_local_path(name: str) -> bool:
    """Whether ``name`` can only be a local path: a Hub id is ``name`` or ``owner/name``, never absolute, never
    starting with ``.`` or ``~``, never deeper; and ``owner/name`` under an existing local folder ``owner`` is
    meant as that folder's child."""
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return True
    return "/" in name and Path(name).parent.is_dir()


def check_local_model_folder(name: str) -> None:
    """Refuse a local path that is not a saved model folder, before ``from_pretrained`` mistakes it for a Hub id."""
    path = Path(name).expanduser()
    if path.is_file():
        raise ModelUnavailableError(f"{name!r} is a file: pass the folder that holds config.json and the weights")
    if path.is_dir() and (path / TRAINING_MODEL_SUBFOLDER / "config.json").is_file():
        raise ModelUnavailableError(f"{name!r} is a training run's output folder; its model is the subfolder "
                                    f"{str(Path(name) / TRAINING_MODEL_SUBFOLDER)!r}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelUnavailableError(f"the folder {name!r} holds no config.json: not a model folder written by "
                                    "save_pretrained (training/run.py writes one, <output_dir>/model, at the end of "
                                    "a run)")
    if not path.exists() and names_a_local_path(name):
        raise ModelUnavailableError(f"the model folder {name!r} does not exist ({path.resolve()}); check the path "
                                    "(training/run.py writes a model folder at the end of a run)")


def folder_label(folder: Path) -> str:
    """A model's name in results: its folder's, or for a training run's ``<output_dir>/model`` the run's."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == TRAINING_MODEL_SUBFOLDER and folder.parent.name else folder.name


def resolve_model_source(name: str) -> tuple[str, str]:
    """``(path_or_hub_id, label)`` for a local folder, an offline alias (see ``offline_assets``) or a Hub id."""
    check_local_model_folder(name)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder), folder_label(folder)
    if name.lower() in OFFLINE_ASSETS:
        try:
            return str(locate_offline_asset(name.lower())), OFFLINE_ASSETS[name.lower()].label
        except FileNotFoundError as error:
            raise ModelUnavailableError(str(error)) from error
    return name, name


def unavailable_hint(name: str, error: Exception) -> ModelUnavailableError:
    if Path(name).expanduser().is_dir():
        return ModelUnavailableError(f"could not load the model folder {name!r}: {error}")
    aliases = ", ".join(f"{a.alias!r} ({a.install_hint})" for a in OFFLINE_ASSETS.values())
    return ModelUnavailableError(
        f"could not load model {name!r}: there is no local folder of that name, and as a Hugging Face Hub id: "
        f"{error}\nIf the Hub is unreachable (offline machine, HF_HUB_OFFLINE=1), pass a local model folder "
        f"instead, or one of the offline aliases: {aliases}."
    )


def load_pretrained(name: str, model_class, device="cpu", dtype=torch.float32, trust_remote_code=False) -> LoadedModel:
    """``model_class.from_pretrained`` plus the tokenizer, in eval mode on ``device``, with a clear offline error.
    Code shipped with the model (``auto_map``) runs only with `trust_remote_code`, as in ``transformers``."""
    path, label = resolve_model_source(name)
    try:
        model = model_class.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise unavailable_hint(name, error) from error
    except ValueError as error:
        raise refused_remote_code(name, error) from error
    return LoadedModel(model.to(device).eval(), tokenizer, source=name, path=path, label=label)


def refused_remote_code(name: str, error: ValueError) -> Exception:
    """transformers' refusal to run a model's own code, as the flag that allows it; other errors unchanged."""
    if "trust_remote_code" not in str(error):
        return error
    return ModelUnavailableError(f"{name!r} ships its own Python code (config.json 'auto_map'), which is not run "
                                 "without consent: pass --trust_remote_code if you trust its source (TarFlowLM "
                                 "folders need no flag: the installed package provides their classes)")


def register_tarflow_classes() -> None:
    """Register the installed package's TarFlowLM Auto classes, so a TarFlowLM folder loads them (and not the copy
    of the code saved in the folder) without ``trust_remote_code``."""
    try:
        import modeling_tarflow  # noqa: F401  (its import registers the classes)
    except ImportError:
        pass


def load_evaluated_model(name: str, device="cpu", dtype=torch.float32, trust_remote_code=False) -> LoadedModel:
    """A saved TarFlowLM folder (``AutoModel``) or a causal LM baseline; a folder's own code runs only with
    `trust_remote_code`."""
    register_tarflow_classes()
    path, _ = resolve_model_source(name)
    try:
        model_type = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    except OSError as error:
        raise unavailable_hint(name, error) from error
    except ValueError as error:
        raise refused_remote_code(name, error) from error
    model_class = AutoModel if model_type in LATENT_MODEL_TYPES else AutoModelForCausalLM
    return load_pretrained(name, model_class, device, dtype, trust_remote_code=trust_remote_code)


def load_reference_lm(name: str, device="cpu", dtype=torch.float32) -> LoadedModel:
    """The causal LM that scores samples (Gen-PPL)."""
    return load_pretrained(name, AutoModelForCausalLM, device, dtype)


def load_encoder(name: str, device="cpu", dtype=torch.float32) -> LoadedModel:
    """The base model (no LM head) whose hidden states are MAUVE features, as ``mauve-text`` loads it."""
    return load_pretrained(name, AutoModel, device, dtype)
