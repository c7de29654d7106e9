"""The checkpoint directory: a Hugging Face Llama model directory plus what exact resume needs.

    step-000500.ckpt/
      config.json, generation_config.json       HF LlamaConfig (what transformers / mlx_lm read)
      model.safetensors                         HF names, metadata {"format": "pt"}
      tokenizer.json, tokenizer_config.json ... when a tokenizer directory is given
      optimizer.safetensors                     "<param>.exp_avg", "<param>.exp_avg_sq" (fp32)
      trainer_state.json                        step, tokens, lr, seeds, loss, backend, versions
      train_config.yaml                         the resolved run config

Tensors are numpy arrays; bf16 is `ml_dtypes.bfloat16`, which safetensors' numpy API writes and
reads bit-exactly (numpy itself has no bf16, and a cast through fp32 would not be a round trip).
Writes and deletions go through core.fs (a hidden temporary name, fsync, rename), so a `*.ckpt`
directory is always complete.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from core.cli import UserError
from core.config import Config, ConfigError, ModelConfig
from core.fs import atomic_path, is_temporary, remove_atomically, write_text
from core.hf_config import from_hf_config, to_hf_config
from core.weights import check_weights, weights_dtype

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


class CheckpointError(UserError):
    """A checkpoint that cannot be read or written, phrased as one line with the fix."""


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
    save_file(contiguous, tmp / "model.safetensors", metadata={"format": "pt"})
    if optimizer:
        moments = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in optimizer.items()}
        save_file(moments, tmp / "optimizer.safetensors", metadata={"format": "pt"})
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)


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
    """Delete all but the newest `keep_last` step checkpoints; `final.ckpt` and `latest`'s target stay."""
    directory = Path(directory)
    latest = directory / LATEST
    protected = set(protect)
    if latest.is_file():
        protected.add(latest.read_text().strip())
    candidates = [p for p in list_checkpoints(directory) if p.name not in protected]
    removed = candidates[: max(0, len(candidates) - keep_last)]
    for path in removed:
        remove_atomically(path)  # never a half-deleted *.ckpt, even when killed here
    return removed


# ------------------------------------------------------------------------------------------- read


def is_checkpoint(path: str | Path) -> bool:
    """A finished model directory: config.json plus weights (a half-written one is never under its final name)."""
    path = Path(path)
    return (
        path.is_dir()
        and not is_temporary(path)
        and (path / "config.json").is_file()
        and ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file())
    )


def checkpoint_step(path: str | Path) -> int:
    state = Path(path) / "trainer_state.json"
    try:
        return int(json.loads(state.read_text()).get("step", -1)) if state.is_file() else -1
    except (ValueError, json.JSONDecodeError):
        return -1


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Finished `*.ckpt` directories under `directory`, oldest step first (final.ckpt last on ties)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("*.ckpt") if is_checkpoint(p)]
    return sorted(found, key=lambda p: (checkpoint_step(p), p.name == "final.ckpt", p.name))


def resolve_resume(spec: str, directory: str | Path) -> Path | None:
    """`auto` -> the `latest` pointer (or newest finished checkpoint), None when there is none;
    anything else must be a finished checkpoint directory."""
    directory = Path(directory)
    if spec == "auto":
        latest = directory / LATEST
        if latest.is_file():
            target = directory / latest.read_text().strip()
            if is_checkpoint(target):
                return target
        found = list_checkpoints(directory)
        return found[-1] if found else None
    path = Path(spec)
    if not is_checkpoint(path):
        raise CheckpointError(
            f"cannot resume from {path}: not a finished checkpoint directory (config.json + model.safetensors)"
        )
    return path


def _require_dir(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (pass a *.ckpt directory written by training)")
    if not is_checkpoint(path):
        raise CheckpointError(f"{path} is not a model directory: it needs config.json and model.safetensors")


def read_json_object(file: Path, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object (config.json, an index), or one line ending in `fix`."""
    try:
        value = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file} is not valid JSON (line {exc.lineno}); {fix}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{file} is not a JSON object; {fix}")
    return value


def weight_files(path: Path, fix: str = "re-download the model") -> list[Path]:
    """The safetensors files holding a model directory's weights: one file, or the shards an index names."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index, fix).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} is damaged (no weight_map); {fix}")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"{path}: shard '{missing[0]}' named in the index is missing; {fix}")
        return [path / s for s in shards]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    if list(path.glob("*.bin")) or list(path.glob("*.pth")):
        raise CheckpointError(
            f"{path} has only pickle weights (*.bin); we read safetensors only: save it with safetensors"
        )
    raise CheckpointError(f"{path} has no model.safetensors (or index); is it a Hugging Face model directory?")


def read_hf_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    _require_dir(path)
    return read_json_object(path / "config.json", "re-export the checkpoint")


def read_model_config(path: str | Path) -> ModelConfig:
    try:
        return from_hf_config(read_hf_config(path))
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(f"{Path(path)}/config.json: {detail}") from None


IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old exporters saved; recomputed by every model


def _read_safetensors(file: Path, fix: str = "delete it and use another checkpoint") -> dict[str, np.ndarray]:
    try:
        with safe_open(file, framework="numpy") as f:
            names = [n for n in f.keys() if not n.endswith(IGNORED_SUFFIXES)]
            bar = tqdm(names, desc=f"read {file.name}", unit="tensor", disable=len(names) < 100 or None, leave=False)
            return {name: f.get_tensor(name) for name in bar}
    except (SafetensorError, OSError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file} is corrupt or truncated ({exc}); {fix}") from None


def load_weights(
    path: str | Path, model_cfg: ModelConfig | None = None, fix: str = "delete it and use another checkpoint"
) -> dict[str, np.ndarray]:
    """All model tensors by HF name (sharded `model.safetensors.index.json` too), checked against the config.
    Reads ours, transformers' and mlx_lm's directories; `fix` ends the message when a file is damaged."""
    path = Path(path)
    model_cfg = model_cfg or read_model_config(path)  # refuses what is not a model directory
    weights = {}
    for file in weight_files(path, fix=fix):
        weights.update(_read_safetensors(file, fix))
    if model_cfg.tie_embeddings:
        weights.pop("lm_head.weight", None)  # some exporters store the tied head twice
    biases = sorted(n for n in weights if n.endswith(".bias"))
    if biases:
        raise CheckpointError(f"{path}: tensor '{biases[0]}' is a bias; this model has no biases")
    try:
        check_weights(model_cfg, weights, source=str(path))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return weights


def load_optimizer(path: str | Path) -> dict[str, np.ndarray] | None:
    file = Path(path) / "optimizer.safetensors"
    return _read_safetensors(file) if file.is_file() else None


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    file = Path(path) / "trainer_state.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{file} is not valid JSON; the checkpoint is damaged, resume from another") from None


def read_eos_ids(path: str | Path) -> set[int]:
    """The ids a model stops at: eos_token_id of generation_config.json and config.json (one id or a list)."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        file = Path(path) / name
        try:
            value = json.loads(file.read_text()).get("eos_token_id") if file.is_file() else None
        except (OSError, ValueError, AttributeError):
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and not isinstance(item, bool):
                ids.add(item)
    return ids


def read_train_config(path: str | Path) -> dict[str, Any] | None:
    file = Path(path) / "train_config.yaml"
    return yaml.safe_load(file.read_text()) if file.is_file() else None
