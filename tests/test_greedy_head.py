"""torch_model/greedy.py: greedy ids from an int8 screen of the head equal the fp32 head's argmax, on random
and adversarial heads (near-ties, rows of very different norms, outliers in the hidden state), one row or
several, and through load_backend's decoder; where the screen cannot apply, the plain head runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import TINY_MODELS, VARIANT_MODELS, random_weights

from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.torch_model import generate as torch_generate
from tinyllama.torch_model.generate import Decoder, load_backend
from tinyllama.torch_model.greedy import GreedyHead, int8_kernel_available

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def head(vocab: int, dim: int, seed: int, spread: float = 0.0) -> torch.Tensor:
    """(vocab, dim) fp32 rows ~ N(0, 0.02), row norms spread by exp(N(0, spread)) as trained embeddings are."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.02, (vocab, dim)) * np.exp(rng.normal(0, spread, (vocab, 1)))
    return torch.from_numpy(w.astype(np.float32))


def hidden(dim: int, seed: int, rows: int = 1) -> torch.Tensor:
    """(rows, dim) RMS-normed states with a few large channels, as final-norm outputs have."""
    rng = np.random.default_rng(seed)
    h = rng.normal(0, 1, (rows, dim))
    h[:, rng.integers(0, dim, 3)] *= 12
    h /= np.sqrt((h**2).mean(axis=1, keepdims=True))
    return torch.from_numpy((h * rng.uniform(0.5, 3)).astype(np.float32))


def exact_top2(weight: torch.Tensor, h: torch.Tensor) -> tuple[int, float]:
    """The float64 argmax of weight @ h (one row) and its lead over the runner-up."""
    logits = weight.double().numpy() @ h.double().numpy()
    order = np.argsort(logits)
    return int(order[-1]), float(logits[order[-1]] - logits[order[-2]])


def test_this_torch_has_the_int8_kernel():
    """The pinned torch has `_int_mm` on the CPU, so the tests below run the screen, not the fallback."""
    assert int8_kernel_available()


@pytest.mark.parametrize("spread", [0.0, 0.7])
def test_the_fp32_argmax_always_survives_and_is_returned(spread):
    weight = head(5000, 96, seed=1, spread=spread)
    screen, returned = GreedyHead(weight), 0
    for seed in range(150):
        h = hidden(96, seed)
        best, lead = exact_top2(weight, h[0])
        alive = screen.survivors(h)[0]
        assert best in alive, seed
        assert alive.size < 50, (seed, alive.size)  # a screen that keeps everything saves nothing
        if lead > 1e-5:  # beyond fp32 rounding, every fp32 kernel agrees on the argmax
            assert int(screen.argmax(h)[0]) == best
            returned += 1
    assert returned > 140


def test_near_ties_are_resolved_by_the_fp32_logits():
    """Rows that differ from the best one by far less than the int8 error: the screen cannot separate them,
    so all survive and fp32 picks; exact duplicates resolve to the first index, as argmax does."""
    weight = head(3000, 64, seed=2)
    h = hidden(64, seed=3)
    best, _ = exact_top2(weight, h[0])
    rng = np.random.default_rng(4)
    twins = rng.choice(3000, 40, replace=False)
    direction = h[0] / h[0].norm() ** 2
    for n, row in enumerate(twins):  # logit of row = the best's + (n - 20) * 1e-4
        jitter = torch.from_numpy(rng.normal(0, 1e-7, 64)).float()
        weight[row] = weight[best] + direction * float(n - 20) * 1e-4 + jitter
    new_best, lead = exact_top2(weight, h[0])
    assert lead > 5e-5 and new_best == twins[-1]
    screen = GreedyHead(weight)
    alive = screen.survivors(h)[0]
    assert set(twins[-5:]) <= set(alive.tolist())
    assert int(screen.argmax(h)[0]) == new_best

    # Small dyadic values, so every logit below is exact in fp32 whatever order a kernel sums in: the tie is
    # exact on any CPU. Row 300 (+-8/64 each) beats every row of values within +-7/64 (32 vs at most 28).
    rng = np.random.default_rng(5)
    dup = torch.from_numpy(rng.integers(-7, 8, (1000, 32)).astype(np.float32) / 64)
    dup[300] = torch.from_numpy(np.where(rng.random(32) < 0.5, -8.0, 8.0).astype(np.float32) / 64)
    dup[700] = dup[300]
    x = dup[300:301] * 64  # rows 300 and 700 tie for the largest logit, 32.0
    assert int(GreedyHead(dup).argmax(x)[0]) == 300 == int((dup @ x[0]).numpy().argmax())


def test_rows_of_a_batch_and_the_full_head_fallback():
    weight = head(4000, 64, seed=6, spread=0.5)
    h = hidden(64, seed=7, rows=3)
    full = (h @ weight.T).numpy().argmax(axis=1)
    assert GreedyHead(weight).argmax(h).tolist() == full.tolist()
    assert GreedyHead(weight, max_survivors=0).argmax(h).tolist() == full.tolist()  # every row: the fp32 head
    flat = torch.zeros(1, 64)  # every logit 0: all rows survive, the full head runs, argmax picks the first
    assert GreedyHead(weight).argmax(flat).tolist() == [0]
    broken = h.clone()
    broken[1, 5] = float("nan")  # a diverged model: the full head, as the plain path computes it
    expected = (broken @ weight.T).numpy().argmax(axis=1)
    assert GreedyHead(weight).argmax(broken).tolist() == expected.tolist()


def test_load_backend_decodes_greedy_through_the_screen(tmp_path):
    cfg = dataclasses.replace(TINY_MODELS["gqa8x2-tied"], vocab_size=2000)
    path = save_checkpoint(tmp_path / "m.ckpt", random_weights(cfg), cfg)
    backend = load_backend(path, device="cpu")
    prompt = [5, 17, 3, 42, 8]
    assert list(backend.generate(prompt, 10)) and backend.new_decoder(True).greedy_head.q is None  # short: unmade
    screen = backend.new_decoder(True).greedy_head
    calls = []
    argmax = screen.argmax
    screen.argmax = lambda h: calls.append(1) or argmax(h)
    screened = list(backend.generate(prompt, 60))
    assert screen.q is not None and len(calls) == 60 - Decoder.SCREEN_FROM + 1  # made at step 16, used since
    calls.clear()
    assert list(backend.generate(prompt, 8)) == screened[:8] and len(calls) == 8  # made: from the first token

    plain_decoder = Decoder(backend.model, True)  # the same model, its fp32 head
    ids, plain = plain_decoder(np.array([prompt])), []
    for _ in range(60):
        plain.append(int(ids[0]))
        ids = plain_decoder(ids)
    assert screened == plain
    assert backend.new_decoder(False).greedy_head is None  # sampling needs every logit


def test_no_screen_where_it_does_not_apply(tmp_path, monkeypatch):
    """Soft-capped logits (tanh can round distinct logits to equal ones), a bf16 head, or a torch without
    the int8 kernel: the decoder takes the plain head."""
    cfg = VARIANT_MODELS["gqa6x3-softcap"]
    path = save_checkpoint(tmp_path / "cap.ckpt", random_weights(cfg), cfg)
    assert load_backend(path, device="cpu").new_decoder(True).greedy_head is None
    plain = TINY_MODELS["gqa8x2-tied"]
    path = save_checkpoint(tmp_path / "plain.ckpt", random_weights(plain), plain)
    assert load_backend(path, dtype="bfloat16", device="cpu").new_decoder(True).greedy_head is None
    monkeypatch.setattr(torch_generate, "int8_kernel_available", lambda: False)
    backend = load_backend(path, device="cpu")
    assert backend.new_decoder(True).greedy_head is None
    assert len(list(backend.generate([1, 2, 3], 20))) == 20
