"""The checkpoint directory: a Hugging Face Llama model directory plus what exact resume needs.

    step-000500.ckpt/
      config.json, generation_config.json       HF LlamaConfig (what transformers / mlx_lm read)
      model.safetensors                         HF names, metadata {"format": "pt"}
      tokenizer.json, tokenizer_config.json ... when a tokenizer directory is given
      optimizer.safetensors                     "<param>.exp_avg", "<param>.exp_avg_sq" (AdamW),
                                                "<param>.momentum_buffer" (Muon), fp32
      trainer_state.json                        step, tokens, lr, seeds, loss, backend, versions
      train_config.yaml                         the resolved run config

Tensors are numpy arrays; bf16 is `ml_dtypes.bfloat16`, which safetensors' numpy API writes and
reads bit-exactly (numpy itself has no bf16, and a cast through fp32 would not be a round trip).
Writes and deletions go through core.fs (a hidden temporary name, fsync, rename), so a `*.ckpt`
directory is always complete. Reading any model directory's config and tensors, checked, is
core/model_files.py (re-exported here, the names callers know a checkpoint by).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors import SafetensorError
from safetensors.numpy import save_file

from tinyllama.core.architecture import check_weights
from tinyllama.core.config import Config, ModelConfig
from tinyllama.core.dtypes import weights_dtype
from tinyllama.core.fs import atomic_path, is_temporary, remove_atomically, write_text
from tinyllama.core.hf_config import to_hf_config
from tinyllama.core.model_files import CheckpointError, is_checkpoint, read_json_object

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)
LATEST = "latest"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------ write


def _write_files(
    tmp: Path,
    weights: dict[str, np.ndarray],
    model_cfg: ModelConfig,
    optimizer: dict[str, np.ndarray] | None,
    trainer_state: dict[str, Any] | None,
    train_config: Config | None,
    tokenizer_dir: str | Path | None,
    bos_token_id: int | None,
    eos_token_id: int | None,
) -> None:
    """Everything a checkpoint holds, written into the temporary directory."""
    hf = to_hf_config(model_cfg, bos_token_id, eos_token_id, dtype=weights_dtype(weights))
    files = {
        "config.json": json.dumps(hf, indent=2) + "\n",
        "generation_config.json": json.dumps(
            {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "do_sample": False}, indent=2
        )
        + "\n",
    }
    state = dict(trainer_state or {})
    state.setdefault("format_version", FORMAT_VERSION)
    state.setdefault("saved_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    state.setdefault("versions", {"python": platform.python_version(), "numpy": np.__version__})
    files["trainer_state.json"] = json.dumps(state, indent=2, default=float) + "\n"
    if train_config is not None:
        files["train_config.yaml"] = yaml.safe_dump(train_config.to_dict(), sort_keys=False)
    for name, text in files.items():
        (tmp / name).write_text(text)

    contiguous = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    save_safetensors(contiguous, tmp / "model.safetensors")
    if optimizer:
        moments = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in optimizer.items()}
        save_safetensors(moments, tmp / "optimizer.safetensors")
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)


def save_safetensors(tensors: dict[str, np.ndarray], file: Path) -> None:
    """safetensors' save_file, with a failed write (a full disk, say) raised as the OSError it is:
    safetensors reports it as its own SafetensorError, which would otherwise end in a traceback."""
    try:
        save_file(tensors, file, metadata={"format": "pt"})
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(file)) from None


def save_checkpoint(
    path: str | Path,
    weights: dict[str, np.ndarray],
    model_cfg: ModelConfig,
    *,
    optimizer: dict[str, np.ndarray] | None = None,
    trainer_state: dict[str, Any] | None = None,
    train_config: Config | None = None,
    tokenizer_dir: str | Path | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> Path:
    """Write a complete checkpoint directory atomically; an existing one at `path` is replaced."""
    path = Path(path)
    check_weights(model_cfg, weights, source=str(path))
    with atomic_path(path) as tmp:
        tmp.mkdir()
        _write_files(
            tmp, weights, model_cfg, optimizer, trainer_state, train_config, tokenizer_dir, bos_token_id, eos_token_id
        )
    return path


def write_latest(directory: str | Path, checkpoint: str | Path) -> None:
    """Point `directory/latest` at a checkpoint (a one-line text file: works on every filesystem)."""
    write_text(Path(directory) / LATEST, Path(checkpoint).name + "\n")


def prune_checkpoints(directory: str | Path, keep_last: int, protect: tuple[str, ...] = ("final.ckpt",)) -> list[Path]:
    """Delete all but the newest `keep_last` step checkpoints; `final.ckpt`, `latest`'s target and every
    checkpoint a run did not write (an imported model, say) stay."""
    directory = Path(directory)
    protected = set(protect)
    with contextlib.suppress(CheckpointError):
        target = read_latest(directory)
        protected |= {target.name} if target is not None else set()
    candidates = [p for p in run_checkpoints(directory) if p.name not in protected]
    removed = candidates[: max(0, len(candidates) - keep_last)]
    for path in removed:
        remove_atomically(path)  # never a half-deleted *.ckpt, even when killed here
    return removed


# ------------------------------------------------------------------------------------------- read


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint was written at, -1 when its trainer_state.json is missing or unreadable."""
    try:
        step = read_trainer_state(path).get("step", -1)
    except CheckpointError:
        return -1
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


def read_latest(directory: str | Path) -> Path | None:
    """The checkpoint `directory/latest` names, or None without one. It must name a checkpoint inside
    `directory`: a pointer elsewhere (`../x`, an absolute path) is refused, never followed."""
    directory = Path(directory)
    latest = directory / LATEST
    if not latest.is_file():
        return None
    name = latest.read_text(errors="replace").strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise CheckpointError(
            f"{latest} names {name!r}, not a checkpoint in {directory}; delete {latest} or pass --resume PATH"
        )
    return directory / name


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Finished `*.ckpt` directories under `directory`, oldest step first (final.ckpt last on ties)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("*.ckpt") if is_checkpoint(p)]
    return sorted(found, key=lambda p: (checkpoint_step(p), p.name == "final.ckpt", p.name))


RUN_CHECKPOINT = re.compile(r"step-\d+\.ckpt|final\.ckpt")


def run_checkpoints(directory: str | Path) -> list[Path]:
    """The finished checkpoints a training run writes (step-NNNNNN.ckpt, final.ckpt), oldest first: what
    `--resume auto`, pruning and `output.overwrite` act on. Any other model directory there (an import such
    as checkpoints/smol.ckpt) is never resumed, pruned or replaced by a run."""
    return [p for p in list_checkpoints(directory) if RUN_CHECKPOINT.fullmatch(p.name)]


def resolve_resume(spec: str, directory: str | Path) -> Path | None:
    """`auto` -> the `latest` pointer (or the run's newest finished checkpoint), None when there is none;
    anything else must be a finished checkpoint directory, never a temporary (possibly incomplete) one."""
    directory = Path(directory)
    if spec == "auto":
        target = read_latest(directory)
        if target is not None and is_checkpoint(target):
            return target
        found = run_checkpoints(directory)
        return found[-1] if found else None
    path = Path(spec)
    if is_temporary(path) or path.name.endswith(".tmp") or ".tmp-" in path.name:
        raise CheckpointError(
            f"cannot resume from {path}: a .tmp directory is a write that may not have finished; resume from a "
            f"finished *.ckpt (--resume auto picks the newest)"
        )
    if not is_checkpoint(path):
        raise CheckpointError(
            f"cannot resume from {path}: not a finished checkpoint directory (config.json + model.safetensors)"
        )
    return path


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """trainer_state.json as a dict ({} when absent: a model directory not written by training)."""
    file = Path(path) / "trainer_state.json"
    return read_json_object(file, "the checkpoint is damaged, resume from another") if file.is_file() else {}


def state_count(state: dict[str, Any], key: str, path: str | Path, minimum: int = 0) -> int:
    """An integer field of trainer_state.json (step, tokens_seen, world_size), checked."""
    value = state.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CheckpointError(
            f"{Path(path) / 'trainer_state.json'}: '{key}' must be an integer >= {minimum}, got {value!r}; "
            f"the checkpoint is damaged, resume from another"
        )
    return value


def read_train_config(path: str | Path) -> dict[str, Any] | None:
    """train_config.yaml as a dict, None when absent."""
    file = Path(path) / "train_config.yaml"
    if not file.is_file():
        return None
    try:
        raw = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        raise CheckpointError(f"{file} is not valid YAML; the checkpoint is damaged, use another") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file} is not a mapping of config sections; the checkpoint is damaged, use another")
    return raw
