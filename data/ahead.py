"""`data.prepare: ahead`: train while the corpus is still being tokenized.

A background `python -m data.prepare` (its own process, tokenizing on every core) builds the prepared
directory shard by shard as usual (data/shards.py: each shard renamed into place when full, resumable);
the trainer starts as soon as the first `data.shard_tokens` tokens exist and reads finished shards as
they appear, waiting only when it catches up with the tokenizer.

The batch of a step must not depend on how far the tokenizer got, so the order is defined on the train
token stream (the same bytes however it is sharded) cut into blocks of B = data.shard_tokens tokens:

- epoch 0 walks the blocks in order; block k's windows (seq_len + 1 tokens at stride seq_len, inside the
  block) come in a permutation seeded by (seed, 0, k); sample g = ((step * grad_accum + micro) * world +
  rank) * batch_size + b is the g-th window of that walk. Step s needs only the blocks its samples fall in.
- the last data.val_fraction of block 0 is never trained on: it is the validation set (fixed, there from
  the first block on; `count` windows evenly spread over it, as data.loader.val_windows does).
- once the whole corpus is prepared, later epochs walk the blocks again with permutations seeded by
  (seed, epoch, k); the count of windows per epoch is known only then, and no step can reach epoch 1
  earlier (it would be waiting for more blocks).

So a run started while shards are being written, a run on the finished directory, a resume and a resume
on the other backend all see the same batches at the same steps. The order differs from `data.prepare:
full`'s (a permutation of the whole split), so switching between them is a different run (resume refuses).

The background prepare is watched at every batch (`Background.check`: one waitpid): killed (a signal: the
OOM killer, a stray kill) it is started again and resumes after its last finished shard, at most RESTARTS
times; failed (its one `error:` line: a full disk, a bad document) the run ends with that line, exit 2,
whether or not it still had data to train on. A run that ends first stops it with a note: its `.partial`
directory keeps the finished shards, and the next run (or prepare) with this data resumes there. A
prepare that fails removes its `.partial` itself, as a foreground one does.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from tinyllama.data.loader import val_windows
from tinyllama.data.store import ConcatTokens, check_model_vocab, read_meta, token_dtype
from tinyllama.data.token_bytes import token_bytes
from tinyllama.data.tokenizer import Tokenizer
from tinyllama.data.util import DataError

POLL_SECONDS = 0.5
RESTARTS = 2  # times a killed background prepare is started again before the run gives up


def _overrides(cfg: Any) -> list[str]:
    """The data config as `--data.key value` arguments for `python -m data.prepare` (which prepares in full)."""
    out = []
    for f in fields(cfg):
        value = "full" if f.name == "prepare" else getattr(cfg, f.name)
        out += [f"--data.{f.name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return out


class Background:
    """The background `python -m data.prepare` of an ahead run: started, watched, restarted when killed, and
    stopped with a note when the run ends before it (module docstring)."""

    def __init__(self, argv: list[str], log: Path, work: Path) -> None:
        self.argv, self.log, self.work = argv, log, work
        self.restarts, self.stopped = 0, False
        self.process = self._start()
        atexit.register(self.stop)

    def _start(self) -> subprocess.Popen:
        with open(self.log, "wb") as err:
            return subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err)

    def check(self) -> int | None:
        """Its exit code once it ended well (0), None while it runs; a DataError once it failed, and a restart
        (with a note) when it was killed."""
        code = self.process.poll()
        if code is None or code == 0:
            return code
        line = self.error_line()
        if code > 0 or line:  # its own error line (exit 2), or a crash (a traceback's last line)
            self.stopped = True  # said here: nothing to say at exit
            raise DataError(f"the background data.prepare failed: {line or f'exit status {code}'}")
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        if self.restarts >= RESTARTS:
            self.stopped = True
            raise DataError(
                f"the background data.prepare was killed ({name}) {self.restarts + 1} times; find what stops it "
                f"(memory: dmesg), or prepare first with python -m data.prepare and train with data.prepare full"
            )
        self.restarts += 1
        print(
            f"note: the background data.prepare was killed ({name}); starting it again, it resumes after its "
            f"last finished shard in {self.work}",
            file=sys.stderr,
        )
        self.process = self._start()
        return None

    def error_line(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines() if self.log.is_file() else []
        return lines[-1].removeprefix("error: ") if lines else ""

    def stop(self, finished: bool = False) -> None:
        """When the run ends: a prepare still at work is stopped (its finished shards stay for the next run), one
        that failed unnoticed is reported; both in a note. One whose data is `finished` (its meta.json is written)
        is only exiting: it is given the moment that takes, not stopped."""
        if self.stopped:
            return
        self.stopped = True
        if finished:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        code = self.process.poll()
        if code is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            print(
                f"note: stopped the background data.prepare; {self.work} keeps its finished shards, and the next "
                f"run (or python -m data.prepare) with this data resumes there",
                file=sys.stderr,
            )
        elif code != 0:
            print(f"note: the background data.prepare failed: {self.error_line() or f'exit {code}'}", file=sys.stderr)


class TrainStream:
    """The train split's finished shards, from the finished directory or the one being built (`work`),
    grown as more appear. `tokens` spans them all; `complete` once meta.json is written."""

    def __init__(self, target: Path, work: Path, dtype: np.dtype, background: Background | None = None) -> None:
        self.target, self.work, self.dtype, self.background = target, work, np.dtype(dtype), background
        self.parts: list[np.ndarray] = []
        self.complete = False
        self.tokens: Any = np.empty(0, self.dtype)

    def _refresh(self) -> None:
        if self.complete:
            return
        if (self.target / "meta.json").is_file():  # finished: its meta.json lists every shard
            meta = read_meta(self.target)
            shards = [s for s in meta["shards"]["train"] if s["tokens"]]
            self.parts = [np.memmap(self.target / s["file"], self.dtype, "r", shape=(s["tokens"],)) for s in shards]
            self.complete = True
        else:
            while True:  # the next full shard, in the directory being built (or just renamed into place)
                name = f"train-{len(self.parts):05d}.bin"
                path = next((d / name for d in (self.work, self.target) if (d / name).is_file()), None)
                if path is None or len(self.parts) and path.stat().st_size != self.parts[0].nbytes:
                    break  # not there, or the last (short) shard: taken from meta.json once complete
                with contextlib.suppress(FileNotFoundError):  # renamed between the check and the open
                    self.parts.append(np.memmap(path, self.dtype, "r"))
                    continue
                break
        if self.parts:
            self.tokens = self.parts[0] if len(self.parts) == 1 else ConcatTokens(self.parts)

    def check(self) -> None:
        """Fail (or restart the prepare) as soon as the background prepare did, even while the run has data."""
        if self.background is not None and not self.complete:
            self.background.check()

    def wait_for(self, count: int) -> None:
        """Block until `count` tokens are prepared or the corpus is complete (fewer); fail if the background
        prepare failed."""
        self._refresh()
        while len(self.tokens) < count and not self.complete:
            code = self.background.check() if self.background is not None else None
            if code == 0:
                self._refresh()
                if not self.complete:
                    raise DataError(f"the background data.prepare ended without finishing {self.target}")
                break
            time.sleep(POLL_SECONDS)
            self._refresh()


class AheadLoader:
    """Batches over a growing train stream in the block order described above (same interface as
    data.loader.BatchLoader: batch(step, micro_step) -> (x, y), denominator(step))."""

    def __init__(self, stream: TrainStream, block: int, hold: int, seq_len: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, grad_accum: int = 1) -> None:  # fmt: skip
        if block - hold < seq_len + 1:
            raise DataError(
                f"data.shard_tokens ({block}) leaves no training window in the first block after the "
                f"{hold} held-out validation tokens; raise data.shard_tokens"
            )
        self.stream, self.block, self.hold, self.seq_len = stream, block, hold, seq_len
        self.batch_size, self.seed, self.grad_accum = batch_size, seed, grad_accum
        self.rank, self.world_size = rank, world_size
        self.counts: list[int] = []  # windows per block, as far as known
        self.cumulative = np.zeros(0, np.int64)
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _windows_in(self, k: int, end: int) -> int:
        stop = min(end, (k + 1) * self.block) - (self.hold if k == 0 else 0)
        return max(0, (stop - k * self.block - 1) // self.seq_len)

    def _extend(self, g: int) -> None:
        """Learn the window counts of blocks until sample g (of epoch 0) falls in a known one."""
        while sum(self.counts) <= g and not (
            self.stream.complete and len(self.counts) * self.block >= len(self.stream.tokens)
        ):
            k = len(self.counts)
            self.stream.wait_for((k + 1) * self.block)
            end = len(self.stream.tokens)
            if k * self.block >= end and self.stream.complete:
                break
            if k == 0 and end < self.hold + self.seq_len + 1:
                raise DataError(
                    f"the corpus has {end} train tokens: too few for the {self.hold} held-out validation tokens "
                    f"and one window; add data or lower data.val_fraction"
                )
            self.counts.append(self._windows_in(k, end))
            self.cumulative = np.cumsum(self.counts)

    def _permutation(self, epoch: int, k: int) -> np.ndarray:
        perm = self._perms.get((epoch, k))
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch, k]).permutation(self.counts[k])
            self._perms[(epoch, k)] = perm
            if len(self._perms) > 8:
                self._perms.popitem(last=False)
        return perm

    def window_start(self, g: int) -> int:
        """The stream offset of sample g's window."""
        if not len(self.cumulative) or g >= self.cumulative[-1]:
            self._extend(g)
        epoch, position = 0, g
        total = int(self.cumulative[-1])
        if g >= total:  # complete: later epochs walk the same blocks again
            epoch, position = divmod(g, total)
        k = int(np.searchsorted(self.cumulative, position, side="right"))
        index = position - (int(self.cumulative[k - 1]) if k else 0)
        return k * self.block + int(self._permutation(epoch, k)[index]) * self.seq_len

    def batch(self, step: int, micro_step: int = 0) -> tuple[np.ndarray, np.ndarray]:
        self.stream.check()
        first = ((step * self.grad_accum + micro_step) * self.world_size + self.rank) * self.batch_size
        starts = [self.window_start(first + b) for b in range(self.batch_size)]
        buf = np.stack([np.asarray(self.stream.tokens[s : s + self.seq_len + 1], np.int32) for s in starts])
        return buf[:, :-1].copy(), buf[:, 1:].copy()

    def denominator(self, step: int) -> float:
        return float(self.batch_size * self.seq_len)


class AheadData:
    """What the trainers get from prepare_data under data.prepare: ahead (PreparedData's interface)."""

    conversations = False

    def __init__(self, cfg: Any, tokenizer: Tokenizer, target: Path, work: Path, key: str, launch: bool) -> None:
        self.cfg, self.tokenizer, self.target, self.key = cfg, tokenizer, target, key
        self.meta: dict[str, Any] = {"source": {"spec": cfg.dataset}}
        self._dir = Path(tempfile.mkdtemp(prefix="tinyllama-tokenizer-"))
        tokenizer.save(self._dir)
        atexit.register(shutil.rmtree, self._dir, True)
        self.background = None
        if launch and not (target / "meta.json").is_file():
            argv = [sys.executable, "-m", "tinyllama.data.prepare", "--quiet", *_overrides(cfg)]
            if shutil.which("nice"):  # the trainer's steps first: tokenizing takes the cores they leave
                argv = ["nice", "-n", "10", *argv]
            self.background = Background(argv, self._dir / "prepare.log", work)
        self.stream = TrainStream(target, work, token_dtype(tokenizer.vocab_size), self.background)

    @property
    def tokenizer_dir(self) -> Path:
        return self._dir

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def check_model_vocab(self, model_vocab_size: int) -> None:
        check_model_vocab(model_vocab_size, self.vocab_size, self.cfg.tokenizer)

    def signature(self) -> dict[str, Any]:
        """Timing-free: the prepared directory's key (source, tokenizer, split) and the block order."""
        order = {"prepare": "ahead", "block": self.cfg.shard_tokens}
        return {
            "tokenizer": self.tokenizer.fingerprint(),
            "tokens": order,
            "sample": self.key,
            "dataset": self.cfg.dataset,
        }

    def token_bytes(self, vocab_size: int) -> np.ndarray:
        """UTF-8 bytes per token id, bits per byte's denominator (data.token_bytes)."""
        return token_bytes(self.tokenizer, vocab_size)

    def prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def close(self) -> None:
        """The run is over: stop the background prepare if it still works (core.loop.Run.finish)."""
        if self.background is not None:
            self.background.stop(finished=self.stream.complete)

    def status(self) -> str:
        """The start-up line: how much is ready, and whether the background prepare goes on."""
        ready = f"{len(self.stream.tokens):,} train tokens ready"
        if self.stream.complete:
            return f"data: prepare ahead: {ready} (all of them)"
        return f"data: prepare ahead: {ready}; the rest is being tokenized in the background into {self.stream.work}"

    def train_batches(self, seq_len: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                      grad_accum: int = 1) -> AheadLoader:  # fmt: skip
        block = self.cfg.shard_tokens
        hold = held_out(block, self.cfg.val_fraction)
        return AheadLoader(self.stream, block, hold, seq_len, batch_size, seed, rank, world_size, grad_accum)

    def val_windows(self, seq_len: int, count: int) -> np.ndarray:
        """`count` windows evenly spread over the held-out end of block 0 (waits for block 0)."""
        return ahead_val(self.stream, self.cfg.shard_tokens, self.cfg.val_fraction, seq_len, count)


def held_out(block: int, val_fraction: float) -> int:
    return max(1, round(block * val_fraction))


def ahead_val(stream: TrainStream, block: int, val_fraction: float, seq_len: int, count: int) -> np.ndarray:
    """The validation windows of an ahead run: data.loader.val_windows over the held-out end of block 0
    (of the corpus, when that is shorter than a block)."""
    stream.wait_for(block)
    end = min(block, len(stream.tokens))
    start = max(0, end - held_out(block, val_fraction))
    return val_windows(np.asarray(stream.tokens[start:end]), seq_len, count)


def finished_val(data: Any, cfg: Any, seq_len: int, count: int) -> np.ndarray:
    """An ahead run's validation windows from its finished prepared directory (evaluate_checkpoints.py)."""
    return ahead_val(TrainStream(data.path, data.path, data.dtype), cfg.shard_tokens, cfg.val_fraction, seq_len, count)
