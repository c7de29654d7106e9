"""MLX's inference layout gives the same results as the plain one: load_backend on MLX's CPU stores the fp32
LM head transposed (torch_model.generate.transpose_storage does every matrix, tests/test_torch_decode.py)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from helpers import TINY_MODELS, random_weights
from mlx.utils import tree_flatten

from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.mlx_model.generate import as_backend, load_backend, transpose_storage
from tinyllama.mlx_model.state import build_model, load_model

PROMPT = [5, 17, 3, 42, 8, 11, 29]


def strides(array: mx.array) -> tuple[int, ...]:
    return memoryview(array).strides  # bytes; MLX exposes its array's real layout to the buffer protocol


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_transposed_storage_keeps_shapes_values_and_tokens(name, tmp_path):
    cfg = TINY_MODELS[name]
    path = save_checkpoint(tmp_path / f"{name}.ckpt", random_weights(cfg), cfg)
    plain = load_model(path)[0]
    backend = load_backend(path)
    relaid = tree_flatten(backend.model.parameters())
    for (key, a), (_, b) in zip(tree_flatten(plain.parameters()), relaid, strict=True):
        assert a.shape == b.shape and mx.array_equal(a, b).item(), key
        head = "embed_tokens" if cfg.tie_embeddings else "lm_head"
        if a.ndim == 2:
            assert strides(a) == (4 * a.shape[1], 4), key
            relaid_strides = (4, 4 * b.shape[0]) if key.endswith(f"{head}.weight") else strides(a)
            assert strides(b) == relaid_strides, key  # the head over (d, V) storage, the rest as loaded
    reference = as_backend(plain)
    for opts in ({}, {"repetition_penalty": 1.3}, {"temperature": 0.9, "top_p": 0.9, "seed": 3}):
        assert list(backend.generate(PROMPT, 30, **opts)) == list(reference.generate(PROMPT, 30, **opts))
    tokens = mx.array([PROMPT * 3])
    assert mx.abs(backend.model(tokens) - plain(tokens)).max().item() < 1e-4
    windows = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 17))
    expected_loss = reference.mean_loss(windows, batch_size=2)
    assert backend.mean_loss(windows, batch_size=2) == pytest.approx(expected_loss, abs=1e-5)


def test_trainers_models_and_gpu_models_keep_their_layout(monkeypatch):
    """as_backend (the trainers' samples) never relays the parameters; on a GPU (Metal, CUDA) nor does
    load_backend; a bf16 head is never transposed."""
    cfg = TINY_MODELS["gqa8x2-tied"]
    model = build_model(cfg, random_weights(cfg))
    list(as_backend(model).generate(PROMPT, 3))
    bf16 = transpose_storage(build_model(cfg, random_weights(cfg), dtype="bfloat16"))
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))
    on_gpu = transpose_storage(build_model(cfg, random_weights(cfg)))
    for m in (model, bf16, on_gpu):
        for key, w in tree_flatten(m.parameters()):
            if w.ndim == 2:
                assert strides(w) == (w.itemsize * w.shape[1], w.itemsize), key
