"""Shared test set-up: no network, no W&B prompt, a repo-local cache, and the ../shared data when present."""

import os
from pathlib import Path

import pytest
import torch

# tiny models: one intra-op thread is as fast on an idle machine and far faster on a busy one
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DA_SHARED", REPO.parent / "shared"))


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (or ``$DA_SHARED/data``); the test is skipped when it is absent."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture
def minilm() -> Path:
    path = SHARED / "models" / "all-MiniLM-L6-v2"
    if not (path / "config.json").exists():
        pytest.skip(f"pretrained MiniLM not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    yield
