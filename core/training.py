"""How a training run is set up, shared by train_mlx.py and train_cuda.py: the config and command line,
where a run starts from (resume, init_from, fresh), what a checkpoint records, the --dry-run estimate.
The loop around the framework's step is core/loop.py."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyllama.core.architecture import count_parameters, flops_per_token, init_weights
from tinyllama.core.checkpoint import (
    LATEST,
    prune_checkpoints,
    read_train_config,
    read_trainer_state,
    resolve_resume,
    run_checkpoints,
    save_checkpoint,
    state_count,
    write_latest,
)
from tinyllama.core.cli import ArgumentParser, UserError, human_bytes, human_count
from tinyllama.core.config import Config, DataConfig, config_from_dict, load_config, parse_overrides, validate
from tinyllama.core.config_help import override_help
from tinyllama.core.fs import hold_lock, remove_atomically, remove_debris
from tinyllama.core.model_files import CheckpointError, load_optimizer, load_weights, read_model_config

# What must match between a checkpoint's run and the resuming run for the next batch to be the same.
RESUME_MUST_MATCH = ("seed", "seq_len", "batch_size", "grad_accum")


def load_train_config(path: str, overrides: dict[str, Any], resume: str = "") -> Config:
    """The run config. A resume continues its own run: the checkpoint's saved model, training and data settings
    are the base and the command line's keys override them (the YAML file's are not applied; where and how the
    run computes, `hardware` and `output`, come from this command). With `training.init_from`, the model section
    is the source checkpoint's (a fine-tune must have its shapes), so config.yaml's model keys need not be
    edited by hand."""
    cfg = load_config(path, overrides)
    if resume:
        try:
            checkpoint = resolve_resume(resume, cfg.output.dir)
        except CheckpointError as exc:
            raise UserError(str(exc)) from None
        saved = read_train_config(checkpoint) if checkpoint is not None else None
        if saved is not None:
            return _resumed_config(cfg, checkpoint, saved, overrides, path)
    source = cfg.training.init_from
    if source:
        try:
            model = read_model_config(source)
        except CheckpointError as exc:
            raise UserError(f"training.init_from: {exc}") from None
        if model != cfg.model:
            print(f"training.init_from: using the model config of {source} "
                  f"({human_count(count_parameters(model))} parameters)", file=sys.stderr)  # fmt: skip
            cfg.model = model
            validate(cfg)
        if cfg.data.tokenizer == DataConfig.tokenizer and (Path(source) / "tokenizer.json").is_file():
            # the default (gpt2) was not chosen for this model: its own tokenizer is the one its ids mean
            print(f"training.init_from: using the tokenizer of {source}", file=sys.stderr)
            cfg.data.tokenizer = str(source)
    return cfg


RUN_SECTIONS = ("model", "training", "data")  # what a run is; hardware and output say where it runs now


def _resumed_config(
    cfg: Config, checkpoint: Path, saved: dict[str, Any], overrides: dict[str, Any], path: str
) -> Config:
    """The checkpoint's own settings with this command's overrides on top, every change listed once."""
    here = cfg.to_dict()
    base = {section: saved.get(section) or {} for section in RUN_SECTIONS}
    base.update(hardware=here["hardware"], output=here["output"])
    try:
        resumed = config_from_dict(base, overrides)
    except UserError as exc:
        raise UserError(f"cannot resume from {checkpoint}: {exc}") from None
    before = config_from_dict({section: base[section] for section in RUN_SECTIONS}).to_dict()
    after = resumed.to_dict()
    changes = [_differences(before[section], after[section], section, skip=("init_from",)) for section in RUN_SECTIONS]
    changed = ", ".join(change for change in changes if change)
    unused = [
        f"{section}.{key}"
        for section in RUN_SECTIONS
        for key in after[section]
        if key != "init_from"
        and f"{section}.{key}" not in overrides
        and _comparable(here[section][key]) != _comparable(after[section][key])
    ]
    changed = f"; changed: {changed}" if changed else ""
    print(f"resuming {checkpoint} with its own settings{changed}", file=sys.stderr)
    if unused:
        print(f"note: {path}'s {', '.join(unused)} not applied (a resume keeps its run's settings; pass "
              "--section.key to change one)", file=sys.stderr)  # fmt: skip
    return resumed


def parse_train_args(doc: str, argv: list[str] | None, prog: str) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = ArgumentParser(prog=prog, description=doc, epilog=override_help())
    parser.add_argument("--config", default="config.yaml", help="YAML run config (default: config.yaml)")
    parser.add_argument("--resume", default="", help="'auto' (newest in output.dir, if any) or a *.ckpt directory")
    parser.add_argument("--dry-run", action="store_true", help="print size, FLOPs and memory estimate, then exit")
    args, rest = parser.parse_known_args(argv)
    return args, parse_overrides(rest)


@dataclass
class Start:
    """Where a run begins: fresh weights, `init_from` weights, or a full resume."""

    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] | None = None
    step: int = 0  # steps already done (the schedule's and the data's position)
    updates: int = 0  # of those, the ones whose update was applied (Adam's bias-correction count)
    tokens_seen: int = 0
    source: str = "init"
    state: dict[str, Any] = field(default_factory=dict)


def resolve_start(cfg: Config, resume: str, world_size: int, data: dict[str, Any] | None = None) -> Start:
    """Resume exactly from a checkpoint, start from `training.init_from` weights, or init fresh. A resume
    must continue the same run: same model, data (`data` is PreparedData.signature()), batch layout and
    process count; what else changed (the schedule, say) is allowed and printed."""
    path = resolve_resume(resume, cfg.output.dir) if resume else None
    if path is not None:
        model = read_model_config(path)
        if model != cfg.model:
            diff = _differences(dataclasses.asdict(model), dataclasses.asdict(cfg.model), "model")
            raise UserError(f"cannot resume from {path}: the model differs ({diff}); use the same model config")
        state = read_trainer_state(path)
        step, tokens = state_count(state, "step", path), state_count(state, "tokens_seen", path)
        if state_count(state, "world_size", path, minimum=1) != world_size:
            raise UserError(f"cannot resume from {path}: it ran on {state['world_size']} processes, now {world_size}")
        _check_same_data(path, state, data)
        old = read_train_config(path) or {}
        old_training = old.get("training") if isinstance(old.get("training"), dict) else {}
        for key in RESUME_MUST_MATCH:
            if key in old_training and old_training[key] != getattr(cfg.training, key):
                raise UserError(
                    f"cannot resume from {path}: training.{key} was {old_training[key]}, now "
                    f"{getattr(cfg.training, key)}; keep it equal so the data order continues"
                )
        optimizer = load_optimizer(path, cfg.model, cfg.training.optimizer)
        if optimizer is None:
            raise UserError(f"cannot resume from {path}: it has no optimizer.safetensors (use training.init_from)")
        updates = state_count(state, "updates", path) if "updates" in state else step
        return Start(load_weights(path, cfg.model), optimizer, step, updates, tokens, str(path), state)
    if cfg.training.init_from:
        source = Path(cfg.training.init_from)
        try:
            weights = load_weights(source, cfg.model)
        except CheckpointError as exc:
            raise UserError(f"training.init_from: {exc}") from None
        return Start(weights, source=str(source))
    return Start(init_weights(cfg.model, cfg.training.seed))


def _differences(old: dict[str, Any], new: dict[str, Any], section: str, skip: tuple[str, ...] = ()) -> str:
    """`section.key old -> new` for every key both dicts hold with different values."""
    keys = [k for k in new if k in old and k not in skip and _comparable(old[k]) != _comparable(new[k])]
    return ", ".join(f"{section}.{k} {_shown(old[k])} -> {_shown(new[k])}" for k in keys)


def _shown(value: Any) -> str:
    return repr(value) if value == "" else str(_comparable(value))


def _comparable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def _check_same_data(path: Path, state: dict[str, Any], data: dict[str, Any] | None) -> None:
    """The resumed run must read the same tokens: same tokenizer, same prepared splits."""
    old = state.get("data_signature")
    if data is None or not isinstance(old, dict):
        return  # a checkpoint from before signatures were recorded: nothing to compare
    if old.get("tokenizer") != data["tokenizer"]:
        raise UserError(
            f"cannot resume from {path}: it was trained with another tokenizer (fingerprint {old.get('tokenizer')}, "
            f"data.tokenizer now gives {data['tokenizer']}); use the run's own data.tokenizer"
        )
    if old.get("tokens") != data["tokens"] or old.get("sample") != data["sample"]:
        raise UserError(
            f"cannot resume from {path}: its data differs (dataset '{old.get('dataset')}', {old.get('tokens')} "
            f"tokens; now '{data['dataset']}', {data['tokens']}); use the run's own data.dataset (data an earlier "
            f"version prepared, whose split counted tokens, is still in data.cache_dir/prepared: pass its "
            f"directory as --data.dataset)"
        )


def claim_output(cfg: Config, resume: str) -> None:
    """Make output.dir this run's, before any long work: it must be a writable directory no other process
    trains into (a lock held for the whole run), debris of killed writers is cleared, and a previous run there
    is continued (--resume) or replaced on request (output.overwrite), never mixed with or truncated."""
    out = Path(cfg.output.dir)
    logs = Path(cfg.output.logs) / cfg.output.run_name
    for path, key in ((out, "output.dir"), (logs, "output.logs")):
        if path.exists() and not path.is_dir():
            raise UserError(f"{key} {path} is a file, not a directory; move it or set --{key} elsewhere")
        try:
            path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()  # a real write: permissions, read-only mounts
        except OSError as exc:
            raise UserError(f"{key} {path} is not writable ({exc.strerror}); set --{key} elsewhere") from None
    if not hold_lock(out / ".lock"):
        holder = (out / ".lock").read_text(errors="replace").strip() or "?"
        raise UserError(
            f"another training run (pid {holder}) is writing to {out}; wait for it or set --output.dir elsewhere"
        )
    remove_debris(out)
    metrics = logs / "metrics.jsonl"
    previous = run_checkpoints(out)
    logged = metrics.is_file() and metrics.stat().st_size > 0
    if resume or not (previous or logged):
        return
    source = Path(cfg.training.init_from).resolve() if cfg.training.init_from else None
    if source in [p.resolve() for p in previous]:
        raise UserError(
            f"training.init_from {cfg.training.init_from} is a checkpoint of the run in {out}, which this run would "
            f"replace; copy it out first (cp -r {cfg.training.init_from} <elsewhere>.ckpt) or set --output.dir to "
            f"another directory"
        )
    if not cfg.output.overwrite:
        what = f"{len(previous)} checkpoint(s)" if previous else f"the log {metrics}"
        raise UserError(
            f"{out} already holds a run ({what}); continue it with --resume auto, or replace it with "
            f"--output.overwrite true (deletes that run's step-*.ckpt, final.ckpt and logs; nothing else), or set "
            f"--output.dir elsewhere"
        )
    print(f"output.overwrite: replacing the previous run in {out} ({len(previous)} checkpoint(s))", file=sys.stderr)
    for path in [*previous, out / LATEST, metrics, logs / "loss.png", logs / "tensorboard"]:
        remove_atomically(path)


def trainer_state(
    cfg: Config,
    step: int,
    updates: int,
    tokens_seen: int,
    lr: float,
    loss: float,
    backend: str,
    world_size: int,
    elapsed: float,
    data_signature: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What trainer_state.json records: enough to continue exactly, and to read the run later."""
    return {
        "step": step,
        "updates": updates,
        "tokens_seen": tokens_seen,
        "lr": lr,
        "loss": loss,
        "backend": backend,
        "world_size": world_size,
        "seed": cfg.training.seed,
        "data": {
            "next_step": step,
            "seed": cfg.training.seed,
            "seq_len": cfg.training.seq_len,
            "batch_size": cfg.training.batch_size,
            "grad_accum": cfg.training.grad_accum,
        },
        "data_signature": data_signature,
        "wall_time": elapsed,
    }


def write_checkpoint(
    cfg: Config,
    name: str,
    weights: dict[str, np.ndarray],
    optimizer: dict[str, np.ndarray],
    state: dict[str, Any],
    tokenizer_dir: Path | None,
    eos_id: int | None,
    bos_id: int | None,
) -> Path:
    """Write `output.dir/<name>`, point `latest` at it, prune old step checkpoints."""
    directory = Path(cfg.output.dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(
        directory / name,
        weights,
        cfg.model,
        optimizer=optimizer,
        trainer_state=state,
        train_config=cfg,
        tokenizer_dir=tokenizer_dir,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    write_latest(directory, path)
    prune_checkpoints(directory, cfg.training.keep_last)
    return path


def nonfinite_error(step: int, loss: float, grad_norm: float, weight_norm: float) -> UserError:
    """What both trainers raise when training.on_nonfinite is stop."""
    return UserError(
        f"non-finite loss, gradient or weights at step {step} (loss {loss}, grad norm {grad_norm}, weight norm "
        f"{weight_norm}); that step is not saved. Lower training.lr, or set training.on_nonfinite skip"
    )


def step_name(step: int) -> str:
    return f"step-{step:06d}.ckpt"


@dataclass
class MemoryTraits:
    """How a backend's training step holds memory: what estimate_memory needs beyond the config. Each trainer
    fills it in for its device (train_cuda.py, train_mlx.py)."""

    loss_bytes: float | None = None  # a chunked loss's peak (torch: torch_model.loss.held_bytes); None: full logits
    runtime_bytes: int = 0  # held before the model exists, where the peak shown is the process's RSS (a CPU)
    lazy_graph: bool = False  # one graph per step (MLX): gradients and activations are alive together
    logit_copies: int = 2  # unchunked loss: logits-sized fp32 arrays held at once (mlx_model.loss.logit_copies)
    fp32_weights: bool = False  # fp32 master weights and gradients under bf16 autocast (torch)
    activation_scale: float = 1.0  # a compiled step keeps fewer (torch_model.wrap.COMPILED_ACTIVATIONS)


def estimate_memory(cfg: Config, traits: MemoryTraits | None = None) -> dict[str, float]:
    """Peak bytes of one training process: weights, optimizer state (fp32), gradients and what the forward
    keeps for the backward (activations, logits). torch frees activations as its backward produces the
    gradients, so its peak holds the larger of the two; a `lazy_graph` (MLX) holds both at once.
    A chunked loss (torch's) says what it holds (`loss_bytes`); otherwise the loss holds `logit_copies` arrays of
    the full fp32 logits.
    `runtime_bytes` is counted where the peak the log line shows is the process's resident set (a CPU, MPS)
    rather than an allocator's. The activation size is fitted to the peaks both backends report
    (bench/memory.py, docs/benchmarks.md)."""
    traits = traits or MemoryTraits()
    m, t = cfg.model, cfg.training
    n = count_parameters(m)
    act_bytes = 2 if t.dtype == "bfloat16" else 4
    weight_bytes = 4 if traits.fp32_weights else act_bytes
    tokens = t.batch_size * t.seq_len
    per_layer = tokens * (24 * m.d_model + m.d_ff) * act_bytes  # saved per token and layer (fitted)
    logits = traits.loss_bytes if traits.loss_bytes is not None else tokens * m.vocab_size * 4 * traits.logit_copies
    parts = {
        "weights": n * weight_bytes,
        "gradients": n * weight_bytes,
        "optimizer state": 4 * (2 * n - (count_parameters(m, muon_only=True) if t.optimizer == "muon" else 0)),
        "activations": m.n_layers * per_layer * traits.activation_scale,
        "logits": logits,
    }
    saved = parts["activations"] + logits
    grads = parts["gradients"] + saved if traits.lazy_graph else max(parts["gradients"], saved)
    held = parts["weights"] + parts["optimizer state"] + grads
    parts["total"] = held * 1.15 + traits.runtime_bytes  # allocator slack
    if traits.runtime_bytes:
        parts["runtime"] = traits.runtime_bytes
    return parts


def dry_run_report(
    cfg: Config,
    steps: int,
    world_size: int,
    device: str,
    memory_bytes: int,
    traits: MemoryTraits | None = None,
) -> tuple[str, bool]:
    """The text --dry-run prints, and whether the estimate fits in the device's memory."""
    m, t = cfg.model, cfg.training
    n = count_parameters(m)
    fpt = flops_per_token(m, t.seq_len)
    tokens_per_step = t.batch_size * t.grad_accum * t.seq_len * world_size
    est = estimate_memory(cfg, traits)
    lines = [
        f"model: {human_count(n)} parameters ({human_count(count_parameters(m, False))} without embeddings), "
        f"{m.n_layers} layers, d_model {m.d_model}, heads {m.n_heads}/{m.n_kv_heads} (q/kv), vocab {m.vocab_size}",
        f"compute: {fpt / 1e6:.1f} MFLOPs per token, {human_count(tokens_per_step)} tokens per step, "
        f"{steps} steps = {human_count(steps * tokens_per_step)} tokens, "
        f"{steps * tokens_per_step * fpt / 1e15:.2f} PFLOPs in all",
        "memory estimate per process: "
        + ", ".join(f"{k} {human_bytes(v)}" for k, v in est.items() if k != "total")
        + f" -> about {human_bytes(est['total'])}",
        f"device: {device}, memory {human_bytes(memory_bytes) if memory_bytes else 'unknown'}",
    ]
    fits = not memory_bytes or est["total"] <= 0.9 * memory_bytes
    if not fits:
        lines.append(
            f"does not fit: ~{human_bytes(est['total'])} needed, {human_bytes(memory_bytes)} available; lower "
            "training.batch_size (raise training.grad_accum to keep tokens per step) or training.seq_len"
        )
    return "\n".join(lines), fits
