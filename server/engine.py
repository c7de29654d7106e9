"""The continuous-batching scheduler: one thread (serve.py's main one) decodes every running request together,
one token per step.

Requests wait in a bounded queue (`submit` raises Busy when it is full: the server answers 503 instead of
growing without limit). Between two decode steps the engine admits queued requests while rows are free:
their prompts are prefilled (equal lengths together), their first tokens picked, and they join the running
batch (core.generate.RowBatch, supplied by the backend: mlx_model/batch.py or torch_model/batch.py). A
request leaves the batch when it reaches EOS, a stop string or its token limit, or when its client went away
(`Job.cancelled`, set from any thread): its row is free for the next step.

Framework-free: the backend returns fp32 logits per row; tokens are picked here in numpy with
core.sampling (each request its own generator, seeded as infer.py seeds one prompt), text is cut at stop
strings here (server/stops.py), and each request's events go to its `emit` callback from this thread.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tinyllama.core.generate import RowBatch
from tinyllama.core.sampling import SamplingParams, select_token
from tinyllama.server.stops import StopText


@dataclass
class TokenInfo:
    """A generated token with its log-probability and the most likely alternatives (when asked for)."""

    id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Piece:
    """New text (may be empty while a stop string is undecided) and the tokens it came from."""

    text: str
    tokens: list[TokenInfo]


@dataclass
class Done:
    """The end of a request: reason is stop | length | cancelled | error (with `message`)."""

    reason: str
    prompt_tokens: int
    completion_tokens: int
    message: str = ""


Event = Piece | Done


@dataclass
class Job:
    """One generation request inside the engine. `emit` is called from the engine's thread."""

    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    text: StopText
    emit: Callable[[Event], None]
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    logprobs: int | None = None  # None: off; k >= 0: each token's log-probability and its k top alternatives
    cancelled: bool = False  # set by the server when the client is gone
    finished: bool = False
    generated: int = 0
    last: int = -1
    rng: np.random.Generator = field(init=False)
    seen: dict[int, None] = field(init=False)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)
        self.seen = dict.fromkeys(self.prompt) if self.params.repetition_penalty != 1.0 else {}


class Busy(Exception):
    """The queue is full, or the engine is shutting down."""


class Engine:
    """Runs `new_batch(max_rows)`'s rows: `run` in the calling thread (serve.py's main thread) or `start` in a
    thread of its own; `submit` and `stop` from any thread."""

    def __init__(self, new_batch: Callable[[int], RowBatch], max_rows: int = 8, max_queue: int = 64):
        self.new_batch, self.max_rows = new_batch, max_rows
        self.queue: queue.Queue[Job | None] = queue.Queue(max_queue)
        self.active: list[Job] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.steps = self.tokens = 0
        self.started = time.time()

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        """Decode in this thread until `stop`. serve.py runs it in the main thread: torch's CPU kernels ran a
        decode step 1.14-1.5x slower from a second thread (bench/serve_step.py)."""
        self._run()

    def submit(self, job: Job) -> None:
        if self.stopping.is_set():
            raise Busy("the server is shutting down")
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise Busy(f"the server is busy ({self.queue.maxsize} requests already wait); retry later") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current step; requests still running or queued end as cancelled. Waits for the
        engine's own thread (`start`), not for a `run` in another thread."""
        self.stopping.set()
        try:
            self.queue.put_nowait(None)  # wakes an idle engine
        except queue.Full:
            pass
        if self.thread.is_alive():
            self.thread.join(timeout)

    def status(self) -> dict:
        return {"running": len(self.active), "queued": self.queue.qsize(), "steps": self.steps, "tokens": self.tokens}

    # ----------------------------------------------------------------------- the engine's thread (run / start)

    def _run(self) -> None:
        batch = self.new_batch(self.max_rows)
        while not self.stopping.is_set():
            admitted: list[Job] = []
            try:
                self._admit(batch, admitted)
                if self.active:
                    self._step(batch)
            except Exception as exc:  # a failed step fails its requests, never the server
                print(f"error: decoding failed ({type(exc).__name__}: {exc}); its requests ended", file=sys.stderr)
                for job in [*self.active, *admitted]:
                    self._finish(job, "error", f"decoding failed: {type(exc).__name__}")
                self.active = []
                batch = self.new_batch(self.max_rows)
        for job in self.active:
            self._finish(job, "cancelled")
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._finish(job, "cancelled")

    def _admit(self, batch: RowBatch, new: list[Job]) -> None:
        """Queued requests into free rows (listed in `new`): prefilled (equal lengths together), first tokens
        picked."""
        while len(self.active) + len(new) < self.max_rows:
            try:  # an idle engine waits for work; a busy one only takes what is already there
                job = self.queue.get(timeout=0.5) if not self.active and not new else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                break
            if job.cancelled:
                self._finish(job, "cancelled")
            else:
                new.append(job)
        groups: dict[int, list[Job]] = {}
        for job in new:
            groups.setdefault(len(job.prompt), []).append(job)
        for group in groups.values():
            logits = batch.to_host(batch.prefill(np.array([job.prompt for job in group])))  # (k, V)
            first = len(self.active)
            self.active += group
            done = [first + i for i, job in enumerate(group) if self._advance(job, logits[i])]
            self._drop(batch, done)

    def _step(self, batch: RowBatch) -> None:
        self._drop(batch, [r for r, job in enumerate(self.active) if job.cancelled], "cancelled")
        if not self.active:
            return
        logits = batch.to_host(batch.step(np.array([job.last for job in self.active])))  # (rows, V)
        self.steps += 1
        self._drop(batch, [r for r, job in enumerate(self.active) if self._advance(job, logits[r])])

    def _drop(self, batch: RowBatch, rows: list[int], reason: str | None = None) -> None:
        for r in sorted(rows, reverse=True):  # the last row moves into r: drop from the end
            if reason:
                self._finish(self.active[r], reason)
            batch.drop(r)
            self.active[r] = self.active[-1]
            self.active.pop()

    def _advance(self, job: Job, logits: np.ndarray) -> bool:
        """Pick `job`'s next token from its logits (V,), emit its text; True when the job is finished."""
        if job.params.greedy:
            token = int(np.argmax(logits))
        else:
            token = select_token(logits, job.params, job.rng, list(job.seen))
        job.generated += 1
        self.tokens += 1
        if token in job.stop_ids:
            text = job.text.flush()
            if text:
                job.emit(Piece(text, []))
            self._finish(job, "stop")
            return True
        if job.params.repetition_penalty != 1.0:
            job.seen[token] = None
        job.last = token
        info = [token_info(logits, token, job.logprobs)] if job.logprobs is not None else []
        text, stopped = job.text.push(token)
        full = job.generated >= job.max_tokens
        if full and not stopped:
            text += job.text.flush()
        if text or info:
            job.emit(Piece(text, info))
        if stopped or full:
            self._finish(job, "stop" if stopped else "length")
            return True
        return False

    @staticmethod
    def _finish(job: Job, reason: str, message: str = "") -> None:
        if not job.finished:
            job.finished = True
            job.emit(Done(reason, len(job.prompt), job.generated, message))


def token_info(logits: np.ndarray, token: int, top: int) -> TokenInfo:
    """The chosen token's log-probability under the model (log-softmax of its logits) and the `top` most likely."""
    shifted = logits.astype(np.float64) - logits.max()
    logprobs = np.maximum(shifted - np.log(np.exp(shifted).sum()), -9999.0)  # (V,); OpenAI's floor, never -inf
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = np.argpartition(-logprobs, min(top, len(logprobs) - 1))[:top]
        best = [(int(i), float(logprobs[i])) for i in ids[np.argsort(-logprobs[ids], kind="stable")]]
    return TokenInfo(token, float(logprobs[token]), best)
