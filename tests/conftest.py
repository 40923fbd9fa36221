"""Test-wide settings: offline Hugging Face libraries, a private HF cache, deterministic small CPU runs."""

import os
import tempfile

# Before any Hugging Face import: never reach the Hub, and keep remote-code module copies out of ~/.cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="tarflow-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
