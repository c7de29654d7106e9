"""model(tokens, targets=...) is the mean next-token loss, fused with the head and chunked in both twins.

Both compute the gradient inside the forward pass, so they are checked against autodiff through a
plain cross-entropy of materialised logits: losses, every parameter's gradient, the scaling a
gradient-accumulation divisor applies, the no-grad (eval) path, bf16 autocast, torch.compile /
mx.compile, and the two twins against each other on the same weights.
"""

from __future__ import annotations

import weakref

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import mlx_cross_entropy, random_weights, tokens_for, torch_cross_entropy
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import tinyllama.torch_model.loss as loss_module
from tinyllama.core.architecture import init_weights
from tinyllama.mlx_model.state import build_model as build_mlx
from tinyllama.torch_model.loss import keep_eager_under_compile
from tinyllama.torch_model.state import build_model as build_torch


def reference_loss_and_grads(model, x, y):
    loss = torch_cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("chunk_rows", [5, 16, 1000])  # uneven chunks, even chunks, one chunk
def test_fused_loss_and_gradients_equal_autograd_through_logits(tiny_model_cfg, chunk_rows, monkeypatch):
    cfg = tiny_model_cfg
    monkeypatch.setitem(loss_module.CHUNK_BYTES, "cpu", chunk_rows * cfg.vocab_size * 4)
    model = build_torch(cfg, random_weights(cfg))
    tokens = torch.from_numpy(tokens_for(cfg, 3, 17))  # 48 rows: several chunks unless chunk_rows is large
    x, y = tokens[:, :-1], tokens[:, 1:]
    expected_loss, expected = reference_loss_and_grads(model, x, y)

    loss = model(x, targets=y)
    (loss / 4).backward()  # a grad-accumulation divisor must scale every gradient
    assert loss.shape == () and abs(loss.item() - expected_loss.item()) < 1e-5
    for name, p in model.named_parameters():
        assert torch.allclose(4 * p.grad, expected[name], rtol=1e-4, atol=1e-6), name
    assert max(g.abs().max().item() for g in expected.values()) > 1e-3  # gradients carry signal


def test_eval_path_returns_the_same_loss_without_gradients(tiny_model_cfg, monkeypatch):
    cfg = tiny_model_cfg
    monkeypatch.setitem(loss_module.CHUNK_BYTES, "cpu", 7 * cfg.vocab_size * 4)
    model = build_torch(cfg, random_weights(cfg))
    tokens = torch.from_numpy(tokens_for(cfg, 2, 20, seed=3))
    with torch.no_grad():
        expected = torch_cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).item()
        loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    assert not loss.requires_grad
    assert abs(loss.item() - expected) < 1e-5


def test_bf16_autocast_matches_the_autocast_logits_path(monkeypatch):
    from helpers import TINY_MODELS

    cfg = TINY_MODELS["gqa8x2-tied"]
    monkeypatch.setitem(loss_module.CHUNK_BYTES, "cpu", 8 * cfg.vocab_size * 4)
    model = build_torch(cfg, random_weights(cfg))
    tokens = torch.from_numpy(tokens_for(cfg, 2, 33))
    x, y = tokens[:, :-1], tokens[:, 1:]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_loss, expected = reference_loss_and_grads(model, x, y)
        loss = model(x, targets=y)
    loss.backward()
    assert abs(loss.item() - expected_loss.item()) < 2e-2 * expected_loss.item()
    for name, p in model.named_parameters():
        assert p.grad.dtype == torch.float32
        scale = expected[name].abs().max().item()
        assert (p.grad - expected[name]).abs().max().item() < 0.05 * scale, name


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages that operations create and are still alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self.alive = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            storage = t.untyped_storage() if isinstance(t, torch.Tensor) else None
            if storage is None or storage.data_ptr() in self.alive or storage.nbytes() == 0:
                continue  # not a tensor, an output written into an existing buffer (out=, in place), or empty
            self.alive.add(storage.data_ptr())
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
            weakref.finalize(storage, self._freed, storage.data_ptr(), storage.nbytes())
        return out

    def _freed(self, pointer: int, nbytes: int) -> None:
        self.alive.discard(pointer)
        self.now -= nbytes


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("plain", [True, False])
def test_the_fused_loss_holds_what_the_memory_estimate_counts(dtype, plain, monkeypatch):
    """--dry-run counts the loss's buffers with held_bytes; here the storages its forward (where it computes
    the gradients too) allocates are tracked and their peak compared, fp32 and under bf16 autocast, for plain
    cross-entropy and for a loss whose gradient autograd computes."""
    tokens, vocab, d = 512, 4000, 32  # the vocab side dominates, as in a real model
    monkeypatch.setitem(loss_module.CHUNK_BYTES, "cpu", tokens * vocab * 4 // 4)  # 4 chunks
    monkeypatch.setattr(loss_module, "plain_cross_entropy", lambda *terms: plain)
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, d, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, d, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    with autocast, LiveBytes() as live:
        loss = loss_module.linear_cross_entropy(h, weight, targets)
    counted = loss_module.held_bytes(tokens, vocab, d, "cpu", dtype, compiled=False, plain=plain)
    assert 1.0 <= live.peak / counted < 1.08, (live.peak, counted)
    loss.backward()  # the gradients it made are the ones autograd gets
    assert h.grad.shape == h.shape and weight.grad.dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("chunk_rows", [5, 1000])
def test_mlx_fused_loss_and_gradients_equal_autodiff_through_logits(tiny_model_cfg, chunk_rows, monkeypatch):
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    import tinyllama.mlx_model.loss as mlx_loss

    cfg = tiny_model_cfg
    monkeypatch.setattr(mlx_loss, "CHUNK_BYTES", chunk_rows * cfg.vocab_size * 4)
    model = build_mlx(cfg, random_weights(cfg))
    tokens = mx.array(tokens_for(cfg, 3, 17, seed=2))
    x, y = tokens[:, :-1], tokens[:, 1:]
    plain = nn.value_and_grad(model, lambda m, x, y: mlx_cross_entropy(m(x), y))
    fused = nn.value_and_grad(model, lambda m, x, y: m(x, targets=y) / 4)
    compiled = mx.compile(lambda x, y: fused(model, x, y), inputs=model.state, outputs=model.state)  # as trained
    expected_loss, expected = plain(model, x, y)
    loss, grads = compiled(x, y)
    assert abs(4 * loss.item() - expected_loss.item()) < 1e-5
    expected = dict(tree_flatten(expected))
    for name, g in tree_flatten(grads):
        assert np.allclose(4 * np.array(g), np.array(expected[name]), rtol=1e-4, atol=1e-6), name
    assert max(np.abs(np.array(g)).max() for g in expected.values()) > 1e-3


def test_mlx_cpu_exp_is_within_fp32_rounding_of_exp():
    """The loss's CPU exp(x - top) (mlx_model/loss.cpu_exp) against float64 exp, and its edges."""
    from tinyllama.mlx_model.loss import cpu_exp

    x = np.concatenate([np.linspace(-87, 0, 200_001), np.linspace(0, 88, 20_001)]).astype(np.float32)
    exact = np.exp(x.astype(np.float64))
    with mx.stream(mx.cpu):
        ours = np.array(cpu_exp(mx.array(x), mx.array(0.0)), dtype=np.float64)
        moved = x + np.float32(3.5)  # (N,) fp32, as logits with a row maximum of 3.5
        shifted = np.array(cpu_exp(mx.array(moved[:, None]), mx.array([[3.5]])), dtype=np.float64)[:, 0]
        edges = np.array(cpu_exp(mx.array([-1000.0, np.nan, 0.0]), mx.array(0.0)))
    assert np.max(np.abs(ours - exact) / exact) < 2e-7  # a few fp32 ulps (MLX's own CPU exp on x86: ~4e-6)
    exact_shifted = np.exp(moved.astype(np.float64) - 3.5)
    assert np.max(np.abs(shifted - exact_shifted) / exact_shifted) < 2e-7
    assert 0 < edges[0] < 1.8e-38 and np.isnan(edges[1]) and edges[2] == 1.0  # no underflow to 0, NaN stays


@pytest.mark.slow
def test_mlx_cpu_loss_memory_is_what_the_estimate_counts():
    """The fused loss's step on MLX's CPU holds about logit_copies() + 1 logits-sized arrays (the + 1 is in the
    estimate's fitted slack); a cpu_exp that MLX splits into more kernels (Horner's polynomial: ~7) fails."""
    from tinyllama.mlx_model.loss import linear_cross_entropy, logit_copies

    n, v = 1024, 16384
    with mx.stream(mx.cpu):
        h, w = mx.random.normal((n, 64)), mx.random.normal((v, 64)) * 0.02
        t = mx.random.randint(0, v, (n,))
        mx.eval(h, w, t)
        step = mx.compile(mx.value_and_grad(lambda h, w: linear_cross_entropy(h, w, t), argnums=(0, 1)))
        mx.eval(step(h, w))
        mx.synchronize()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        mx.eval(step(h, w))
    copies = (mx.get_peak_memory() - base) / (n * v * 4)
    assert 2 <= copies <= logit_copies() + 1.5, copies


def test_mlx_targets_call_equals_torch_fused_loss(tiny_model_cfg):
    cfg = tiny_model_cfg
    weights = random_weights(cfg)
    tokens = tokens_for(cfg, 2, 25, seed=5)
    mlx_model = build_mlx(cfg, weights)
    mlx_loss = mlx_model(mx.array(tokens[:, :-1]), targets=mx.array(tokens[:, 1:])).item()
    mlx_plain = mlx_cross_entropy(mlx_model(mx.array(tokens[:, :-1])), mx.array(tokens[:, 1:])).item()
    x, y = torch.from_numpy(tokens[:, :-1]), torch.from_numpy(tokens[:, 1:])
    with torch.no_grad():
        torch_loss = build_torch(cfg, weights)(x, targets=y)
    assert abs(mlx_loss - mlx_plain) < 1e-6
    assert abs(mlx_loss - torch_loss.item()) < 1e-4


@pytest.mark.slow
def test_compiled_model_trains_with_the_fused_loss():
    """torch.compile graphs the model body and runs the fused loss eagerly: same loss, same gradients."""
    from helpers import TINY_MODELS

    cfg = TINY_MODELS["mha4-untied"]
    eager = build_torch(cfg, init_weights(cfg, 0))
    compiled_base = build_torch(cfg, init_weights(cfg, 0))
    keep_eager_under_compile()
    compiled = torch.compile(compiled_base)
    tokens = torch.from_numpy(tokens_for(cfg, 2, 9, seed=1))
    losses = []
    for model in (eager, compiled):
        loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 1e-5
    for (name, p), q in zip(eager.named_parameters(), compiled_base.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    assert np.isfinite(losses).all()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_chunk_loss_equals_autograd(dtype, monkeypatch):
    """The GPU path under torch.compile (each chunk's loss and its backward as compiled kernels), run
    here on the CPU: same loss and gradients as autodiff through plain logits, ignored (-1) rows too."""
    from helpers import TINY_MODELS

    cfg = TINY_MODELS["gqa8x2-tied"]
    monkeypatch.setitem(loss_module.CHUNK_BYTES, "cpu", 8 * cfg.vocab_size * 4)  # uneven chunks of 8 rows
    monkeypatch.setattr(loss_module, "COMPILED_LOSS_DEVICES", {"cpu"})
    keep_eager_under_compile()
    calls = []
    compiled = loss_module._compiled_chunk_loss
    monkeypatch.setattr(loss_module, "_compiled_chunk_loss", lambda *a: calls.append(1) or compiled(*a))
    model = build_torch(cfg, random_weights(cfg))
    tokens = torch.from_numpy(tokens_for(cfg, 2, 21, seed=4))
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    y[0, :5] = -1  # no loss on these rows
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with autocast:
        logits = model(x)
    expected_loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1)
    expected_loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with autocast:
        loss = model(x, targets=y)
    loss.backward()
    assert len(calls) == 5  # 40 rows in chunks of 8: every chunk took the compiled kernel
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert abs(loss.item() - expected_loss.item()) < tol * expected_loss.item()
    for name, p in model.named_parameters():
        scale = expected[name].abs().max().item()
        assert (p.grad - expected[name]).abs().max().item() < (1e-4 if dtype == torch.float32 else 0.05) * scale, name


def _torch_loss_and_grads(model, x, y):
    loss = model(x, targets=y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def _mlx_loss_and_grads(model, x, y):
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    loss, grads = nn.value_and_grad(model, lambda m, x, y: m(x, targets=y))(model, x, y)
    return loss.item(), {k: np.array(v) for k, v in tree_flatten(grads)}


def test_the_fused_gradient_is_autodiff_of_chunk_loss(tiny_model_cfg, monkeypatch):
    """Plain cross-entropy takes a fused path (softmax - one_hot from the loss's own exp, in reused buffers);
    every other loss goes through autodiff of chunk_loss. Both twins: the two give the same loss and gradients,
    so the fast path is chunk_loss's gradient and cannot drift from it. Ignored (-1) rows too."""
    import tinyllama.mlx_model.loss as mlx_loss

    cfg = tiny_model_cfg
    monkeypatch.setitem(loss_module.CHUNK_BYTES, "cpu", 7 * cfg.vocab_size * 4)  # uneven chunks
    monkeypatch.setattr(mlx_loss, "CHUNK_BYTES", 7 * cfg.vocab_size * 4)
    weights = random_weights(cfg)
    tokens = tokens_for(cfg, 2, 19, seed=6)
    x, y = tokens[:, :-1], tokens[:, 1:].copy()
    y[1, :4] = -1
    torch_model, mlx_model = build_torch(cfg, weights), build_mlx(cfg, weights)
    results = {}
    for path in ("fused", "autodiff"):
        if path == "autodiff":
            monkeypatch.setattr(loss_module, "plain_cross_entropy", lambda *terms: False)
            monkeypatch.setattr(mlx_loss, "plain_cross_entropy", lambda *terms: False)
        results[path] = (
            _torch_loss_and_grads(torch_model, torch.from_numpy(x), torch.from_numpy(y)),
            _mlx_loss_and_grads(mlx_model, mx.array(x), mx.array(y)),
        )
    for (fused_loss, fused_grads), (loss, grads) in zip(results["fused"], results["autodiff"], strict=True):
        assert abs(fused_loss - loss) < 1e-5
        for name, g in grads.items():
            expected = np.asarray(fused_grads[name])
            assert np.allclose(np.asarray(g), expected, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("case", ["logit_softcap", "z_loss", "both"])
def test_loss_terms_equal_autodiff_through_the_full_logits(case, monkeypatch):
    """A soft-capped model's loss and a z-loss term, chunked with their gradients from autodiff of chunk_loss,
    equal autodiff through the materialised (capped) logits: CE + z_loss * mean(logsumexp^2); both twins.
    Evaluation (no `training`) leaves the z-loss out."""
    import dataclasses

    import mlx.nn as nn
    from helpers import TINY_MODELS
    from mlx.utils import tree_flatten as mlx_flatten

    import tinyllama.mlx_model.loss as mlx_loss
    from tinyllama.core.config import TrainingConfig

    cfg = dataclasses.replace(TINY_MODELS["gqa6x3-untied-eps"], logit_softcap=2.5 if case != "z_loss" else 0.0)
    training = TrainingConfig(z_loss=0.05 if case != "logit_softcap" else 0.0)
    monkeypatch.setitem(loss_module.CHUNK_BYTES, "cpu", 7 * cfg.vocab_size * 4)
    monkeypatch.setattr(mlx_loss, "CHUNK_BYTES", 7 * cfg.vocab_size * 4)
    weights = random_weights(cfg)
    tokens = tokens_for(cfg, 2, 19, seed=7)
    x, y = tokens[:, :-1], tokens[:, 1:]

    model = build_torch(cfg, weights)
    logits = model(torch.from_numpy(x)).float()  # capped when the model caps
    assert case == "z_loss" or logits.abs().max() < 2.5
    log_z = logits.logsumexp(-1)
    expected = torch_cross_entropy(logits, torch.from_numpy(y)) + training.z_loss * log_z.square().mean()
    expected.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss = model(torch.from_numpy(x), targets=torch.from_numpy(y), training=training)
    loss.backward()
    assert abs(loss.item() - expected.item()) < 1e-5
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, reference[name], rtol=1e-4, atol=1e-6), name
    with torch.no_grad():  # evaluation: cross-entropy alone
        plain = torch_cross_entropy(logits.detach(), torch.from_numpy(y)).item()
        assert abs(model(torch.from_numpy(x), targets=torch.from_numpy(y)).item() - plain) < 1e-5

    mlx_model = build_mlx(cfg, weights)
    ours = nn.value_and_grad(mlx_model, lambda m, x, y: m(x, targets=y, training=training))
    mlx_value, mlx_grads = ours(mlx_model, mx.array(x), mx.array(y))
    assert abs(mlx_value.item() - expected.item()) < 1e-5
    for name, g in mlx_flatten(mlx_grads):
        assert np.allclose(np.array(g), reference[name].numpy(), rtol=1e-4, atol=1e-6), name
