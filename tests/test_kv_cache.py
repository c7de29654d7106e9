"""Incremental decoding with the KV cache equals one full forward pass, on both backends."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import TINY_MODELS, random_weights

from tinyllama.mlx_model.state import build_model as build_mlx
from tinyllama.torch_model.state import build_model as build_torch

# (chunk sizes fed one after another): plain prefill + decode, a cached prefill at a non-zero
# offset, and chunks that cross the cache's 256-position growth boundary.
SCHEDULES = {
    "prefill-then-decode": [13] + [1] * 27,
    "chunk-at-offset": [10, 7, 5, 1, 1, 16],
    "cross-growth": [250, 3, 9, 1, 17],
}


def run_torch(cfg, weights, tokens, schedule):
    model = build_torch(cfg, weights).eval()
    cache = model.make_cache()
    out, pos = [], 0
    with torch.no_grad():
        full = model(torch.from_numpy(tokens)).numpy()
        for n in schedule:
            out.append(model(torch.from_numpy(tokens[:, pos : pos + n]), cache).numpy())
            pos += n
    assert cache[0].offset == pos
    return full, np.concatenate(out, axis=1)


def run_mlx(cfg, weights, tokens, schedule):
    model = build_mlx(cfg, weights)
    cache = model.make_cache()
    out, pos = [], 0
    full = np.array(model(mx.array(tokens)))
    for n in schedule:
        out.append(np.array(model(mx.array(tokens[:, pos : pos + n]), cache)))
        pos += n
    assert cache[0].offset == pos
    return full, np.concatenate(out, axis=1)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("model_name", ["gqa8x2-tied", "mha4-untied"])
def test_cached_decoding_equals_full_forward(backend, schedule, model_name):
    cfg = dataclasses.replace(TINY_MODELS[model_name], max_seq_len=320)
    chunks = SCHEDULES[schedule]
    weights = random_weights(cfg)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(2, sum(chunks)))
    full, incremental = (run_torch if backend == "torch" else run_mlx)(cfg, weights, tokens, chunks)
    assert incremental.shape == full.shape
    assert np.abs(incremental - full).max() < 1e-4


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_positions_past_max_seq_len_are_refused(backend):
    cfg = dataclasses.replace(TINY_MODELS["gqa8x2-tied"], max_seq_len=16)
    tokens = np.zeros((1, 17), dtype=np.int64)
    with pytest.raises(ValueError, match="exceeds max_seq_len 16"):
        if backend == "torch":
            build_torch(cfg)(torch.from_numpy(tokens))
        else:
            build_mlx(cfg)(mx.array(tokens))
