"""Shared test set-up: no network, one torch thread, datasets in a temporary Minari root."""

from __future__ import annotations

import os

# Set before minari / huggingface_hub are imported anywhere: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_minari_root(tmp_path_factory, monkeypatch):
    """Every test writes Minari datasets under its own temporary root, never ~/.minari."""
    root = tmp_path_factory.mktemp("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    yield root
