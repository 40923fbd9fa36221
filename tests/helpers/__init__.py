"""Functions and stand-ins shared by several test modules, one module per test folder."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository root
