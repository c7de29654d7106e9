"""Shared fixtures: tiny model configs and a tiny tokenizer, all offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import TINY_MODELS  # noqa: E402

from tinyllama.core.config import ModelConfig  # noqa: E402


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny_model_cfg(request) -> ModelConfig:
    return TINY_MODELS[request.param]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One prepared-data cache for every training test in the session (prepared on first use)."""
    return tmp_path_factory.mktemp("data_cache")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads spin against each other on a busy 2-core box."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
