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

from core.config import ModelConfig  # noqa: E402

# Shapes the parity tests sweep: GQA and MHA/MQA, tied and untied, odd vocab, explicit head_dim.
TINY_MODELS = {
    "gqa8x2-tied": ModelConfig(
        vocab_size=97, n_layers=2, d_model=64, n_heads=8, n_kv_heads=2, d_ff=96, max_seq_len=128
    ),
    "mha4-untied": ModelConfig(
        vocab_size=131, n_layers=2, d_model=32, n_heads=4, n_kv_heads=4, d_ff=64, tie_embeddings=False, max_seq_len=128
    ),
    "mqa-headdim-theta": ModelConfig(
        vocab_size=101,
        n_layers=3,
        d_model=48,
        n_heads=4,
        n_kv_heads=1,
        d_ff=80,
        head_dim=16,
        rope_theta=500000.0,
        max_seq_len=128,
    ),
    "gqa6x3-untied-eps": ModelConfig(
        vocab_size=257,
        n_layers=2,
        d_model=48,
        n_heads=6,
        n_kv_heads=3,
        d_ff=77,
        norm_eps=1e-6,
        tie_embeddings=False,
        max_seq_len=128,
    ),
}


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny_model_cfg(request) -> ModelConfig:
    return TINY_MODELS[request.param]


def write_word_tokenizer(directory: Path, vocab_size: int) -> Path:
    """A whitespace word-level tokenizer with `vocab_size` ids that transformers and mlx_lm both load."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    return directory


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
