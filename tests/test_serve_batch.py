"""The serving batch and its scheduler, in this process: rows at different positions decoded together give each
row the logits it gets alone (both backends), a lone row the very tokens infer.py's decoder gives, and the
framework-free engine admits, finishes, cancels and refuses requests as it should (a fake batch)."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers import ROOT, TINY_MODELS, VARIANT_MODELS, random_weights

from tinyllama.core.sampling import SamplingParams, TextStream
from tinyllama.server.engine import Busy, Done, Engine, Job, Piece
from tinyllama.server.stops import StopText

GREEDY = SamplingParams()
TOLERANCE = 1e-4  # fp32 logits of one row alone vs in a batch: the same math, other kernel shapes
SHAPES = ["gqa8x2-tied", "mha4-untied", "mqa-headdim-theta"]


def backend_of(name: str, cfg):
    weights = random_weights(cfg, 0)
    if name == "torch":
        import torch

        from tinyllama.torch_model.generate import as_backend, transpose_storage
        from tinyllama.torch_model.model import Model, fuse_projections

        model = Model(cfg)
        model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()}, strict=False)
        return as_backend(fuse_projections(transpose_storage(model.eval())))
    import mlx.core as mx

    from tinyllama.mlx_model.generate import as_backend, transpose_storage
    from tinyllama.mlx_model.model import Model

    model = Model(cfg)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=False)
    return as_backend(transpose_storage(model))


def alone(backend, prompt: list[int], forced: list[int]) -> list[np.ndarray]:
    """Logits (V,) after the prompt and after each forced token, through infer.py's decoder."""
    decode = backend.new_decoder(False)
    out, logits = decode(np.array([prompt])), []
    for token in forced:
        logits.append(decode.to_host(out)[0])
        out = decode(np.array([[token]]))
    return logits


@pytest.mark.parametrize("backend_name", ["torch", "mlx"])
@pytest.mark.parametrize("shape", [*SHAPES, "gqa8x2-qk_norm", "gqa6x3-softcap"])
def test_rows_at_different_positions_get_their_own_logits(backend_name, shape, one_torch_thread):
    """Rows join at different steps with prompts of different lengths (two prefilled together), one leaves in the
    middle (the last row moves into its place): every row's logits at every step match the row decoded alone."""
    cfg = {**TINY_MODELS, **VARIANT_MODELS}[shape]
    backend = backend_of(backend_name, cfg)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (5, 9, 9, 3, 12)]
    steps = 10
    forced = [rng.integers(0, cfg.vocab_size, steps).tolist() for _ in prompts]  # teacher forcing: any tokens
    expected = [alone(backend, p, f) for p, f in zip(prompts, forced, strict=True)]
    joins = {0: [0], 2: [1, 2], 3: [3], 6: [4]}  # step -> prompts that join before it
    batch, rows, got = backend.new_row_batch(4), [], {i: [] for i in range(len(prompts))}
    for step in range(40):
        if step in joins:
            out = batch.to_host(batch.prefill(np.array([prompts[i] for i in joins[step]])))
            for i, logits in zip(joins[step], out, strict=True):
                got[i].append(logits)
            rows += joins[step]
        if step == 5 and 0 in rows:  # prompt 0 leaves early, from the middle of the batch
            r = rows.index(0)
            batch.drop(r)
            rows[r] = rows[-1]
            rows.pop()
        for r in reversed(range(len(rows))):
            if len(got[rows[r]]) == steps:
                batch.drop(r)
                rows[r] = rows[-1]
                rows.pop()
        if not rows:
            if step > max(joins):
                break
            continue
        out = batch.to_host(batch.step(np.array([forced[i][len(got[i]) - 1] for i in rows])))
        for r, i in enumerate(rows):
            got[i].append(out[r])
    for i in range(len(prompts)):
        n = len(got[i])
        assert n == (6 if i == 0 else steps), (i, n)
        assert np.abs(np.stack(got[i]) - np.stack(expected[i][:n])).max() < TOLERANCE, i


@pytest.mark.parametrize("backend_name", ["torch", "mlx"])
def test_a_lone_row_decodes_the_tokens_infer_decodes(backend_name, one_torch_thread):
    """One row alone runs the same calls as infer.py's decoder (no mask, same shapes): equal tokens, exactly."""
    cfg = TINY_MODELS["gqa8x2-tied"]
    backend = backend_of(backend_name, cfg)
    prompt = np.random.default_rng(2).integers(0, cfg.vocab_size, 7).tolist()
    expected = list(backend.generate(prompt, 20))
    batch = backend.new_row_batch(8)
    tokens = [int(batch.to_host(batch.prefill(np.array([prompt])))[0].argmax())]
    while len(tokens) < 20:
        tokens.append(int(batch.to_host(batch.step(np.array(tokens[-1:])))[0].argmax()))
    assert tokens == expected


def test_the_server_package_imports_no_framework():
    code = (
        "import sys, server.engine, server.app, server.protocol, server.answers, server.stops; "
        "print('torch' in sys.modules, 'mlx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------------------------------- the engine


class FakeBatch:
    """A RowBatch whose next token is always (its row's last token + 1) % V: visible order, no framework."""

    V = 50

    def __init__(self, max_rows: int, fail_at: int | None = None):
        self.max_rows, self.rows, self.last, self.steps, self.fail_at = max_rows, 0, [], 0, fail_at
        self.gate = threading.Event()
        self.gate.set()

    def _logits(self, tokens) -> np.ndarray:
        out = np.zeros((len(tokens), self.V), np.float32)
        out[np.arange(len(tokens)), (np.asarray(tokens) + 1) % self.V] = 5.0
        return out

    def prefill(self, prompts: np.ndarray) -> np.ndarray:
        assert self.rows + len(prompts) <= self.max_rows
        self.rows += len(prompts)
        return self._logits(prompts[:, -1])

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.gate.wait(5)
        self.steps += 1
        if self.fail_at is not None and self.steps == self.fail_at:
            raise RuntimeError("boom")
        assert len(tokens) == self.rows
        return self._logits(tokens)

    def drop(self, row: int) -> None:
        self.rows -= 1

    @staticmethod
    def to_host(out):
        return out


def job(prompt, max_tokens=5, stops=(), stop_ids=frozenset(), params=GREEDY):
    events, finished = [], threading.Event()

    def emit(event):
        events.append(event)
        if isinstance(event, Done):
            finished.set()

    stream = TextStream(lambda ids: "".join(f"<{i}>" for i in ids))
    j = Job(list(prompt), max_tokens, params, StopText(stream, stops), emit, None, stop_ids)
    return j, events, finished


def text(events) -> str:
    return "".join(e.text for e in events if isinstance(e, Piece))


def test_the_engine_batches_finishes_by_length_stop_id_and_stop_string():
    batches = []
    engine = Engine(lambda n: batches.append(FakeBatch(n)) or batches[-1], max_rows=4, max_queue=8)
    engine.start()
    try:
        a, a_events, a_done = job([1, 2], max_tokens=4)
        b, b_events, b_done = job([7], max_tokens=10, stop_ids=frozenset({10}))
        c, c_events, c_done = job([20, 21, 22], max_tokens=10, stops=["<25>"])
        for j in (a, b, c):
            engine.submit(j)
        assert all(done.wait(5) for done in (a_done, b_done, c_done))
    finally:
        engine.stop()
    assert text(a_events) == "<3><4><5><6>" and a_events[-1].reason == "length" and a_events[-1].completion_tokens == 4
    assert text(b_events) == "<8><9>" and b_events[-1].reason == "stop"  # 10 is EOS: not in the text
    assert text(c_events) == "<23><24>" and c_events[-1].reason == "stop"  # cut exactly before the stop string
    assert engine.status()["running"] == 0


def test_run_decodes_in_the_calling_thread_until_another_thread_stops_it():
    """serve.py's layout: the engine in the main thread, requests and stop from the HTTP thread."""
    made_in = []

    def new_batch(n):
        made_in.append(threading.current_thread())
        return FakeBatch(n)

    engine = Engine(new_batch, max_rows=2)
    answered, events, done = job([1, 2], max_tokens=3)
    left, left_events, left_done = job([5], max_tokens=10**6)

    def client():
        engine.submit(answered)
        done.wait(5)
        engine.submit(left)
        while engine.status()["running"] < 1:
            threading.Event().wait(0.01)
        engine.stop()

    other = threading.Thread(target=client)
    other.start()
    engine.run()  # returns once the client thread stops it
    other.join(5)
    assert made_in == [threading.current_thread()] and not engine.thread.is_alive()
    assert text(events) == "<3><4><5>" and events[-1].reason == "length"
    assert left_done.is_set() and left_events[-1].reason == "cancelled"  # running at the stop: ended, not lost


def test_a_cancelled_request_leaves_the_batch_and_a_full_queue_refuses():
    made = []
    engine = Engine(lambda n: made.append(FakeBatch(n)) or made[-1], max_rows=1, max_queue=1)
    engine.start()
    try:
        long, events, done = job([1], max_tokens=10**6)
        engine.submit(long)
        while engine.status()["running"] == 0:
            threading.Event().wait(0.01)
        made[0].gate.clear()  # hold the engine inside a step
        waiting, _, waiting_done = job([2], max_tokens=2)
        engine.submit(waiting)
        with pytest.raises(Busy):
            engine.submit(job([3])[0])
        long.cancelled = True
        made[0].gate.set()
        assert done.wait(5) and events[-1].reason == "cancelled"
        assert waiting_done.wait(5)  # the freed row took the queued request
    finally:
        engine.stop()


def test_a_failing_step_ends_its_requests_and_the_engine_goes_on():
    made = []
    engine = Engine(lambda n: made.append(FakeBatch(n, fail_at=2 if not made else None)) or made[-1], max_rows=2)
    engine.start()
    try:
        first, events, done = job([1], max_tokens=10)
        engine.submit(first)
        assert done.wait(5) and events[-1].reason == "error" and "RuntimeError" in events[-1].message
        second, events2, done2 = job([1], max_tokens=3)
        engine.submit(second)
        assert done2.wait(5) and events2[-1].reason == "length"
    finally:
        engine.stop()


@pytest.mark.parametrize(
    "deltas, stops, expected",
    [
        (["Hel", "lo wor", "ld"], ["wor"], ("Hello ", True)),
        (["ab", "c", "d"], ["cd"], ("ab", True)),
        (["a", "b", "x"], ["bc"], ("abx", False)),  # held back "b", then released
        (["x", "yz"], ["y", "xyz"], ("", True)),  # the stop that starts first wins
        (["plain"], [], ("plain", False)),
    ],
)
def test_stop_strings_cut_exactly(deltas, stops, expected):
    pieces = iter(deltas)

    class Stream:
        def push(self, token):
            return next(pieces)

        def flush(self):
            return ""

    out = StopText(Stream(), stops)
    sent, stopped = "", False
    for _ in deltas:
        piece, stopped = out.push(0)
        sent += piece
        if stopped:
            break
    if not stopped:
        sent += out.flush()
    assert (sent, stopped) == expected
