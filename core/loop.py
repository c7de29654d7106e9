"""The training skeleton both trainers share: setup, the tail after every step, and the end of a run.

train_mlx.py and train_cuda.py keep only what the frameworks make different (building the model and
optimizer, the compiled step, the eval forward, capturing state for a checkpoint) and read like this:

    run = Run(cfg, "mlx", device_name, rank, world, peak_flops)
    start = run.prepare(prepare_data(cfg.data), args.resume)   # resume / init_from / fresh, batches, val set
    ...build the model from start.weights...
    run.attach(evaluate, sample, capture, peak_memory)
    for step in run.steps():                         # progress bar; Ctrl-C / SIGTERM end it after a save
        loss, grad_norm = <the framework's step at run.lr(step) on run.batch(step, micro)>
        run.end_step(step, loss, grad_norm, skipped)  # log line, metrics, eval + sample, checkpoints
    run.finish()                                     # final.ckpt, loss.png, what to try next
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from tinyllama.core.architecture import flops_per_token
from tinyllama.core.budget import TimeBudget
from tinyllama.core.cli import UserError, human_bytes, human_flops, progress
from tinyllama.core.config import Config
from tinyllama.core.fs import release_lock
from tinyllama.core.generate import target_bytes
from tinyllama.core.metrics import MetricsLog, bits_per_byte
from tinyllama.core.report import check as check_reporter
from tinyllama.core.report import open_reporter
from tinyllama.core.schedule import lr_at, total_steps
from tinyllama.core.training import (
    MemoryTraits,
    Start,
    claim_output,
    dry_run_report,
    estimate_memory,
    nonfinite_error,
    resolve_start,
    step_name,
    trainer_state,
    write_checkpoint,
)


class TrainingData(Protocol):
    """What the loop reads of the prepared data (data.store.PreparedData, data.ahead's); core/ imports nothing
    from data/, which builds on core."""

    tokenizer: Any  # eos_id, bos_id, decode(ids)
    tokenizer_dir: Path | None
    conversations: bool
    meta: dict[str, Any]

    def check_model_vocab(self, model_vocab_size: int) -> None: ...
    def signature(self) -> dict[str, Any]: ...
    def train_batches(self, seq_len: int, batch_size: int, seed: int, rank: int, world_size: int, grad_accum: int): ...
    def val_windows(self, seq_len: int, count: int) -> Any: ...  # windows (N, seq_len + 1), or packed rows
    def prompt_ids(self, text: str) -> list[int]: ...
    def token_bytes(self, vocab_size: int) -> np.ndarray: ...  # UTF-8 bytes per id (data.token_bytes)


@dataclass
class Device:
    """What the loop needs to know of the device it trains on."""

    name: str  # shown in the start line and --dry-run
    memory: int  # bytes (0: unknown), for --dry-run and the start-up check
    peak_flops: float | None = None  # for MFU (None: MFU not shown)
    peak_measured: bool = False  # peak_flops is this machine's measured GEMM rate, not a published peak
    memory_traits: MemoryTraits = field(default_factory=MemoryTraits)  # for the memory estimate
    absent: str = ""  # --dry-run only: this machine lacks the device planned for; why, and what it needs


Capture = Callable[[], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]  # -> (weights, optimizer moments)
T = TypeVar("T")
Gather = Callable[[np.ndarray], np.ndarray]  # this rank's int64 vector (n,) -> every rank's, (world, n) in rank order


class Run:
    """One training run's framework-free state: data, schedule, progress, metrics, checkpoints."""

    def __init__(
        self,
        cfg: Config,
        backend: str,
        device: Device,
        rank: int,
        world: int,
        any_rank: Callable[[bool], bool] = bool,
        gather: Gather | None = None,
    ):
        """`any_rank(flag)`: True on every process when any process passes True (a collective, so that all
        ranks decide together and none is left waiting for a stopped one). `gather`: every rank's copy of a
        small int64 vector (a collective; needed when world > 1), to check that all ranks start the same run."""
        self.cfg, self.t = cfg, cfg.training
        self.backend, self.device, self.rank, self.world, self.any_rank = backend, device, rank, world, any_rank
        self.gather = gather or (lambda values: values[None])
        devices = cfg.hardware.devices
        if devices and devices != world:
            raise UserError(
                f"hardware.devices is {devices} but {world} process(es) run; start it with python train.py "
                f"(it launches {devices}), or set --hardware.devices 0 to train on as many as are launched"
            )
        if self.t.time_budget and world > 1:
            raise UserError(
                "training.time_budget times one process's steps; with several processes set training.max_steps"
            )
        self.is_main = rank == 0
        self.is_node_main = first_on_its_machine(rank, world)  # starts the machine's own data.prepare: ahead
        self.total = total_steps(self.t, world)
        self.tokens_per_step = self.t.batch_size * self.t.grad_accum * self.t.seq_len * world
        self.stopped = False

    def say(self, text: str) -> None:
        if self.is_main:
            from tqdm import tqdm

            tqdm.write(text)
            sys.stdout.flush()  # piped (CI, `| tee`): each line as it happens

    # ------------------------------------------------------------------------------------- setup

    def dry_run(self) -> None:
        """--dry-run: size, FLOPs and the memory estimate against the device; exit 1 when the run cannot start
        here: it does not fit the device, or the device planned for is not on this machine (`Device.absent`)."""
        d = self.device
        report, fits = dry_run_report(
            self.cfg,
            self.total,
            self.world,
            f"{self.backend} {d.name}",
            d.memory,
            d.memory_traits,
        )
        print(report)
        if d.absent:
            print(f"not here: {d.absent}")
        if d.absent or not fits:
            raise SystemExit(1)

    def claim(self, resume: str) -> None:
        """Before any long work: the model must be able to fit the device, and rank 0 makes output.dir this
        run's (core.training.claim_output: lock, debris, no mixing with an earlier run); every rank learns
        whether that failed, so none is left waiting for the others."""
        d = self.device
        estimate = estimate_memory(self.cfg, d.memory_traits)
        need, have = estimate["total"], d.memory
        if have and need > 1.5 * have:  # the estimate is rough: refuse only what clearly cannot fit
            raise UserError(
                f"this run needs about {human_bytes(need)} but {self.device.name} has {human_bytes(have)}; lower "
                f"training.batch_size or training.seq_len, or the model size (details: --dry-run)"
            )
        error = None
        if self.is_main:
            try:
                check_reporter(self.cfg.output.report_to)  # a missing tensorboard / wandb: before any output
                claim_output(self.cfg, resume)
            except UserError as exc:
                error = exc
        if self.any_rank(error is not None):
            raise error or UserError(f"rank 0 could not use output.dir {self.cfg.output.dir} (see its message)")

    def prepare(self, data: TrainingData, resume: str) -> Start:
        """Where the run starts, its batches and its validation set, from the prepared tokens
        (data.prepare.prepare_data)."""
        t = self.t
        self.data = data
        data.check_model_vocab(self.cfg.model.vocab_size)
        self.signature = data.signature()
        self.start = self.together(lambda: resolve_start(self.cfg, resume, self.world, self.signature))
        self._check_same_start()
        self.loader = data.train_batches(t.seq_len, t.batch_size, t.seed, self.rank, self.world, t.grad_accum)
        self.val = data.val_windows(t.seq_len, t.eval_batches * t.batch_size)
        self.val_targets, self.val_bytes = target_bytes(self.val, data.token_bytes(self.cfg.model.vocab_size))
        if hasattr(data, "status"):  # data.prepare: ahead (data/ahead.py)
            self.say(data.status())
        if data.conversations:
            self.say(
                f"data: {data.meta['rows']['conversations']['train']:,} conversations packed into "
                f"{self.loader.n_windows:,} rows of {t.seq_len + 1} tokens ({self.loader.fill:.0%} filled, "
                f"{self.loader.cut} cut to fit), loss on "
                f"{'answer' if data.meta['rows']['mask_prompt'] else 'all'} tokens"
            )
        self.step, self.updates, self.tokens_seen = self.start.step, self.start.updates, self.start.tokens_seen
        self.budget = None
        if t.time_budget:
            if self.start.step:
                raise UserError(
                    "training.time_budget fixes max_steps when a run starts; a resumed run keeps the max_steps it "
                    "fixed (pass --training.max_steps to change it)"
                )
            self.budget = TimeBudget(t.time_budget * 60, self.start.step, t.warmup_steps, t.eval_every)
        self.loss, self.lr_now = float("nan"), lr_at(self.start.step, t, self.total)
        return self.start

    def together(self, setup: Callable[[], T]) -> T:
        """`setup()` on every rank; if it fails on any, every rank stops (start_together)."""
        return start_together(setup, self.world, self.gather)

    def _check_same_start(self) -> None:
        """Every rank must start the same run at the same step. Each machine reads its own output.dir, config and
        data: a node that cannot see the checkpoint (output.dir on another machine's disk) would start at step 0
        while rank 0 resumes, averaging gradients of other batches from other optimizer states. All ranks compare
        and all stop with the same error, before anything is written."""
        if self.world == 1:
            return
        start = self.start
        config = self.cfg.to_dict()
        config["data"].pop("cache_dir", None)  # where this machine keeps its prepared data: may differ
        run = {section: config[section] for section in ("model", "training", "data")}
        weights = _tensor_digest(start.weights, start.optimizer)
        mine = np.array([start.step, start.updates, _digest(run), _digest(self.signature), weights], np.int64)
        every = np.asarray(self.gather(mine)).reshape(self.world, len(mine))
        other = next((r for r in range(self.world) if not np.array_equal(every[r], every[0])), None)
        if other is None:
            return
        (step, updates, config_id, data_id, _), theirs = every[0], every[other]
        if (theirs[0], theirs[1]) != (step, updates):
            raise UserError(
                f"rank 0 starts at step {step} ({updates} updates), rank {other} at step {theirs[0]} ({theirs[1]} "
                f"updates): every node must see output.dir and its checkpoints at the same path to resume; put "
                f"output.dir on a file system all nodes share, or copy the checkpoint to that path on each node"
            )
        if theirs[2] != config_id:
            raise UserError(
                f"rank {other} has another run config (model, training or data section) than rank 0: start every "
                f"node with the same config file and --section.key arguments (on a resume: the same checkpoint)"
            )
        if theirs[3] != data_id:
            raise UserError(
                f"rank {other} prepared other data than rank 0 (dataset {self.cfg.data.dataset}): every node needs "
                f"the same data files and tokenizer, or one data.cache_dir they share"
            )
        raise UserError(
            f"rank {other} starts from other weights or optimizer state than rank 0 at step {step}: every node must "
            f"read the same checkpoint (--resume) or training.init_from"
        )

    def attach(
        self,
        evaluate: Callable[[np.ndarray], float],
        sample: Callable[..., Iterator[int]],
        capture: Capture,
        peak_memory: Callable[[], int | None],
        capture_on_every_rank: bool = False,
    ) -> None:
        """The framework's parts: `evaluate(windows)` -> mean val loss; `sample(ids, n, eos_id=)` yields ids;
        `capture()` -> (weights, moments) as numpy (a collective under FSDP: `capture_on_every_rank`)."""
        self.evaluate, self.sample, self.capture, self.peak_memory = evaluate, sample, capture, peak_memory
        self.capture_on_every_rank = capture_on_every_rank
        if self.is_main:  # rank 0 alone writes metrics.jsonl, loss.png and output.report_to
            self.log = MetricsLog(Path(self.cfg.output.logs) / self.cfg.output.run_name, self.start.step)
            self.log.reporter = open_reporter(self.cfg, self.log.directory, self.start.step, self.log.rewound)
        self.flops_per_token = flops_per_token(self.cfg.model, self.t.seq_len)
        self.wall_start = time.time() - self.start.state.get("wall_time", 0.0)
        self.meter = Throughput(self.start.step, self.total)
        self.say(
            f"training {self.cfg.output.run_name}: {self.total} steps on {self.backend} {self.device.name}, "
            f"{self.world} process(es); start {self.start.source} at step {self.start.step}"
        )
        if self.device.peak_measured and self.device.peak_flops:
            rate = human_flops(self.device.peak_flops)
            self.say(f"mfu: against this machine's measured {self.t.dtype} GEMM rate, {rate}")

    def batch(self, step: int, micro_step: int) -> tuple[np.ndarray, ...]:
        """This rank's (x, y) int32 (batch_size, seq_len) for a micro-step, a pure function of the step; for
        conversations (x, y, segments), y -1 where no loss is taken (data.loader.PackedLoader)."""
        return self.loader.batch(step, micro_step)

    def denominator(self, step: int) -> np.ndarray:
        """What each micro-batch's summed loss is divided by, so that the step's gradient is the mean over
        all of the step's targets on all ranks (conversations have different numbers per row)."""
        return np.array(self.loader.denominator(step), np.float32)

    def lr(self, step: int) -> float:
        self.lr_now = lr_at(step, self.t, self.total)
        return self.lr_now

    # ----------------------------------------------------------------------------------- the loop

    def steps(self) -> Iterator[int]:
        """The 0-based steps still to run, under a progress bar (on rank 0, only when stdout and stderr are both a
        terminal: piped, the log line every log_every steps is the progress). After SIGINT / SIGTERM the step in
        flight finishes, a checkpoint is written and the iteration ends (exit 0; --resume auto continues)."""
        shown = self.is_main and sys.stdout.isatty()  # and stderr (core.cli.progress): else the log line
        self.bar = progress(total=self.total, initial=self.start.step, shown=shown, unit="step", dynamic_ncols=True)
        try:
            with StopSignal() as stop:
                step = self.start.step
                if self.budget is not None:
                    self.budget.start()
                while step < self.total:  # a time_budget fixes the total after its first steps
                    yield step
                    step += 1
                    if self.any_rank(stop.requested):  # a signal seen by any rank stops every rank here
                        self.stopped = True
                        path = self._save(step_name(self.step))
                        self.say(f"stopped at step {self.step}; saved {path}; continue with --resume auto")
                        return
        finally:
            self.bar.close()

    def finite(self, step: int, loss: float, grad_norm: float, weight_norm: float) -> bool:
        """Whether the step's loss, gradient norm and updated weights' norm are finite on every rank. If
        not: raise (training.on_nonfinite stop), or return False so the trainer undoes the update (skip)."""
        if not self.any_rank(not all(np.isfinite(v) for v in (loss, grad_norm, weight_norm))):
            return True
        if self.t.on_nonfinite == "stop":
            raise nonfinite_error(step + 1, loss, grad_norm, weight_norm)
        self.say(f"step {step + 1}: non-finite loss, gradient or weights, update skipped")
        return False

    def end_step(self, step: int, loss: float, grad_norm: float, skipped: bool = False) -> None:
        """Everything after an optimizer step: counters, log line and metrics, eval + sample, checkpoints. A
        skipped step (its update undone) still counts: its batch was consumed, and the cadence goes on."""
        t, done = self.t, step + 1
        self.step = done
        self.tokens_seen += self.tokens_per_step
        self.bar.update(1)
        if not skipped:
            self.loss, self.updates = loss, self.updates + 1
        if self.is_main and (done % t.log_every == 0 or done == self.total) and not skipped:
            tok_s, eta = self.meter.update(done, self.tokens_per_step)
            peak = self.device.peak_flops
            mfu = tok_s * self.flops_per_token / self.world / peak if peak else None  # tok_s counts all ranks
            elapsed = time.time() - self.wall_start
            self.say(
                self.log.train(
                    done, self.total, loss, self.lr_now, self.tokens_seen, tok_s, mfu,
                    self.peak_memory() or 0, grad_norm, elapsed, eta, self.epoch(done),
                )
            )  # fmt: skip
        paused = time.perf_counter()
        fixed = self.budget.max_steps(done, self._time_evaluation) if self.budget is not None else None
        if fixed is not None:
            self._fix_total(*fixed)
        if t.eval_every and (done % t.eval_every == 0 or done == self.total):
            val = self.evaluate(self.val)
            text = self.sample_text()  # every rank: FSDP gathers weights for the forward
            if self.is_main:
                bpb = bits_per_byte(val, self.val_targets, self.val_bytes)
                self.say(self.log.val(done, val, self.tokens_seen, text, bpb))
        if t.save_every and done % t.save_every == 0 and done < self.total:
            self._save(step_name(done))
        self.meter.last_time += time.perf_counter() - paused  # tok/s and ETA count training steps only

    def epoch(self, done: int) -> float | None:
        """Passes over the training windows after `done` steps (None while data.prepare: ahead still grows)."""
        windows = getattr(self.loader, "n_windows", 0)
        samples = done * self.t.batch_size * self.t.grad_accum * self.world
        return samples / windows if windows else None

    def _time_evaluation(self) -> float:
        """Seconds of one evaluation with its sample (time_budget counts what each will cost)."""
        began = time.perf_counter()
        self.evaluate(self.val)
        self.sample_text()
        return time.perf_counter() - began

    def _fix_total(self, total: int, line: str) -> None:
        """time_budget's max_steps, from here the run's own (its config is saved with every checkpoint)."""
        self.t.max_steps, self.t.max_tokens, self.t.time_budget = total, 0, 0.0
        self.total = self.bar.total = self.meter.total = total
        self.budget = None
        self.say(line)

    def sample_text(self) -> str:
        tokenizer = self.data.tokenizer
        ids = self.data.prompt_ids(self.t.sample_prompt)  # a user turn, through the chat template, for conversations
        new = self.sample(ids, self.t.sample_tokens, eos_id=tokenizer.eos_id)
        return self.t.sample_prompt + tokenizer.decode(list(new))

    def finish(self) -> None:
        """final.ckpt, the loss plot and what to try next (nothing more after a stop signal); output.dir is
        released for the next run."""
        if not self.stopped:
            path = self._save("final.ckpt")
            if self.is_main:
                self.log.plot()
                chat = " --chat" if self.data.conversations else ""
                self.say(f'done: {path}\ntry: python infer.py --ckpt {path}{chat} --prompt "{self.t.sample_prompt}"')
        if self.is_main:
            self.log.close()
            release_lock(Path(self.cfg.output.dir) / ".lock")
        if hasattr(self.data, "close"):  # data.prepare: ahead: its background prepare ends with the run
            self.data.close()

    def _save(self, name: str) -> Path | None:
        if not (self.is_main or self.capture_on_every_rank):
            return None
        weights, moments = self.capture()
        if not self.is_main:
            return None
        broken = next((name for name, value in weights.items() if not np.isfinite(value).all()), None)
        if broken is not None:  # never reached by a run whose steps passed `finite`; a last line of defence
            raise UserError(f"weights are non-finite ('{broken}') at step {self.step}; no checkpoint written")
        elapsed = time.time() - self.wall_start
        state = trainer_state(
            self.cfg, self.step, self.updates, self.tokens_seen, self.lr_now, self.loss, self.backend, self.world,
            elapsed, self.signature,
        )  # fmt: skip
        tokenizer = self.data.tokenizer
        return write_checkpoint(
            self.cfg, name, weights, moments, state, self.data.tokenizer_dir, tokenizer.eos_id, tokenizer.bos_id
        )


def start_together(setup: Callable[[], T], world: int, gather: Gather) -> T:
    """`setup()` (reading the config, the checkpoint to resume) on every rank; when it fails on some, every rank
    stops: the failing ones with their own error line, the others naming them. On several machines a rank that
    just exits leaves the others waiting for it (torchrun's agent on another node never learns of it)."""
    error = None
    try:
        result = setup()
    except Exception as exc:  # a UserError's line, an OSError, a bug's traceback: raised again below
        error = exc
    if world > 1:
        failed = [r for r, row in enumerate(np.asarray(gather(np.array([error is not None], np.int64)))) if row[0]]
        if failed and error is None:
            ranks = ", ".join(map(str, failed))
            raise UserError(f"rank {ranks} could not start (its error line says why, in its node's output)")
    if error is not None:
        raise error
    return result


def _digest(value: Any) -> int:
    """A 56-bit digest of a JSON-able value (fits an int64 on every backend)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")


def _tensor_digest(*groups: dict[str, np.ndarray] | None) -> int:
    """A digest of named tensors from ~4096 evenly spaced elements of each: cheap at any model size, and two
    different checkpoints (or inits) differ in it."""
    digest = hashlib.sha256()
    for group in groups:
        for name in sorted(group or {}):
            flat = np.ascontiguousarray(group[name]).reshape(-1)
            digest.update(name.encode() + str(flat.dtype).encode() + flat[:: max(1, flat.size // 4096)].tobytes())
    return int.from_bytes(digest.digest()[:7], "little")


def first_on_its_machine(rank: int, world: int) -> bool:
    """Whether this process is the first of its machine, which starts that machine's own work (data.prepare: ahead's
    background prepare: each machine may have its own data.cache_dir). torchrun says it in LOCAL_RANK; mlx.launch
    only in its ring hostfile (MLX_HOSTFILE: each rank's "ip:port" list), where the first rank at this rank's address
    is that machine's. When neither says, every process counts as first: the cache's lock makes the others wait."""
    if world == 1:
        return True
    if os.environ.get("LOCAL_RANK", "").isdigit():
        return int(os.environ["LOCAL_RANK"]) == 0
    try:
        ring = json.loads(Path(os.environ["MLX_HOSTFILE"]).read_text())
        hosts = [sorted(address.rpartition(":")[0] for address in entry) for entry in ring]
        if len(hosts) == world:
            return hosts[rank] not in hosts[:rank]
    except (KeyError, OSError, ValueError, TypeError, AttributeError):
        pass
    return True


class StopSignal:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and exits 0.
    A second Ctrl-C while saving is ignored so a checkpoint is never half-written by choice."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. under some test runners): no handler
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Throughput:
    """Tokens/s over the last log window and an ETA from it."""

    def __init__(self, start_step: int, total_steps: int):
        self.total = total_steps
        self.last_time = time.perf_counter()
        self.last_step = start_step

    def update(self, step: int, tokens_per_step: int) -> tuple[float, float]:
        now = time.perf_counter()
        steps = max(1, step - self.last_step)
        dt = max(1e-9, now - self.last_time)
        self.last_time, self.last_step = now, step
        tok_per_s = steps * tokens_per_step / dt
        eta = (self.total - step) * dt / steps
        return tok_per_s, eta
