"""Reading any Llama model directory (ours, transformers', mlx_lm's): config.json, the weights and the
optimizer state (AdamW moments, Muon momentum buffers), each checked before it is used.

Weights are checked from the safetensors headers before any tensor is read (floating-point dtypes, as many
tensors as the config's layers need, names and shapes), then for finite values; a damaged or foreign file
costs no memory and ends in one line naming the file and the fix. Only safetensors and JSON are read: a
directory holding only pickles is refused, `auto_map` code is never imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from tinyllama.core.architecture import ignored_layers, moment_shapes, parameter_shapes, tensor_count
from tinyllama.core.cli import UserError, progress
from tinyllama.core.config import ConfigError, ModelConfig
from tinyllama.core.dtypes import numpy_dtype
from tinyllama.core.fs import is_temporary
from tinyllama.core.hf_config import from_hf_config


class CheckpointError(UserError):
    """A checkpoint that cannot be read or written, phrased as one line with the fix."""


def is_checkpoint(path: str | Path) -> bool:
    """A finished model directory: config.json plus weights (a half-written one is never under its final name)."""
    path = Path(path)
    return (
        path.is_dir()
        and not is_temporary(path)
        and (path / "config.json").is_file()
        and ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file())
    )


def _require_dir(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (pass a *.ckpt directory written by training)")
    if path.is_file() and path.suffix.lower() == ".gguf":
        raise CheckpointError(f"{path} is a GGUF file; import it first: python -m convert import {path} model.ckpt")
    if not is_checkpoint(path):
        if path.is_dir() and (path / "config.json").is_file():
            weight_files(path)  # names what is wrong with the weights (pickle only, a missing shard, none)
        raise CheckpointError(f"{path} is not a model directory: it needs config.json and model.safetensors")


def read_json_object(file: Path, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object (config.json, an index), or one line ending in `fix`."""
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{file} is not UTF-8 text; {fix}") from None
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
        outside = [s for s in shards if not isinstance(s, str) or Path(s).name != s or s in (".", "..")]
        if outside:
            raise CheckpointError(f"{index} names shard {outside[0]!r} outside the model directory; {fix}")
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
FLOAT_TYPES = {"F32", "BF16", "F16", "F64"}  # safetensors dtypes a model or its moments may be stored in


def _header(file: Path, fix: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape) from a file's header only: checked before any tensor is read, so a
    damaged or foreign file costs no memory."""
    try:
        with safe_open(file, framework="numpy") as f:
            slices = {name: f.get_slice(name) for name in f.keys() if not name.endswith(IGNORED_SUFFIXES)}
            return {name: (part.get_dtype(), tuple(part.get_shape())) for name, part in slices.items()}
    except (SafetensorError, OSError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file} is corrupt or truncated ({exc}); {fix}") from None


def _read_tensors(file: Path, names: list[str], fix: str) -> dict[str, np.ndarray]:
    try:
        with safe_open(file, framework="numpy") as f:
            if len(names) >= 100:  # a large model: a progress bar on a terminal (small ones skip importing tqdm)
                names = progress(names, desc=f"read {file.name}", unit="tensor", leave=False)
            tensors = {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file} is corrupt or truncated ({exc}); {fix}") from None
    for name, value in tensors.items():
        if value.dtype == np.float64:
            tensors[name] = value = value.astype(np.float32)
        if not np.isfinite(value).all():
            raise CheckpointError(f"{file}: tensor '{name}' holds NaN or inf; {fix}")
    return tensors


def _read_checked(
    files: list[Path],
    model_cfg: ModelConfig,
    expected: Callable[[], dict[str, tuple[int, ...]]],
    source: str,
    fix: str,
    drop: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Every tensor of `files`, after their headers passed, in this order: floating-point dtypes; as many
    tensors as `model_cfg`'s layers need (so a config.json claiming a billion layers is refused before its
    names are listed); then the names and shapes `expected()` lists. Values must be finite."""
    where: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        for name, (dtype, shape) in _header(file, fix).items():
            if name in drop:
                continue
            if name.endswith(".bias"):
                raise CheckpointError(f"{source}: tensor '{name}' is a bias; this model has no biases")
            if dtype not in FLOAT_TYPES:
                raise CheckpointError(
                    f"{file}: tensor '{name}' is {dtype}, not floating point (quantized or integer weights); "
                    f"use an unquantized model (a .gguf: python -m convert import)"
                )
            if dtype == "BF16":
                numpy_dtype("bfloat16")  # registers numpy's bf16 (ml_dtypes), which safetensors' numpy API needs
            where[name], shapes[name] = file, shape
    named = str(files[0]) if len(files) == 1 else f"{source}'s {len(files)} weight files"
    if tensor_count(model_cfg) > 2 * (len(shapes) + 3):  # what a config.json with an absurd layer count looks like
        raise CheckpointError(
            f"{named} holds {len(shapes)} tensors, far fewer than the {model_cfg.n_layers:,} layers of config.json "
            f"need; a file is truncated or config.json belongs to another model; {fix}"
        )
    expected_shapes = expected()
    missing = [k for k in expected_shapes if k not in shapes]
    extra = [k for k in shapes if k not in expected_shapes]
    if missing or extra:
        what = f"missing tensor '{missing[0]}'" if missing else f"unexpected tensor '{extra[0]}'"
        raise CheckpointError(f"{source}: {what} ({len(missing)} missing, {len(extra)} unexpected); {fix}")
    for name, shape in expected_shapes.items():
        if shapes[name] != shape:
            raise CheckpointError(
                f"{where[name]}: tensor '{name}' has shape {shapes[name]}, config expects {shape}; {fix}"
            )
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        tensors.update(_read_tensors(file, [n for n in expected_shapes if where[n] == file], fix))
    return tensors


def mlx_quantization(path: str | Path) -> dict[str, Any] | None:
    """config.json's `quantization` block of an mlx_lm-quantized directory ({group_size, bits, ...}), else None."""
    block = read_hf_config(path).get("quantization")
    return block if isinstance(block, dict) and "bits" in block else None


def is_mlx_quantized(path: str | Path) -> bool:
    """Whether `path` is a model directory with mlx_lm-quantized weights (False for anything unreadable)."""
    try:
        return (Path(path) / "config.json").is_file() and mlx_quantization(path) is not None
    except UserError:
        return False


def refuse_quantized(path: Path) -> None:
    """Quantized weights cannot be read as float tensors: one line saying what does run them."""
    block = mlx_quantization(path)
    if block is not None:
        raise CheckpointError(
            f"{path} is MLX-quantized ({block['bits']}-bit, groups of {block.get('group_size', '?')}): only MLX "
            f"runs it (--backend mlx, or mlx_lm.generate --model {path}); for torch, transformers or GGUF use "
            f"the unquantized checkpoint it was exported from"
        )
    method = read_hf_config(path).get("quantization_config", {})
    if isinstance(method, dict) and method.get("quant_method"):
        raise CheckpointError(
            f"{path} is quantized with {method['quant_method']}, which this project does not run; "
            f"use the unquantized model"
        )


def load_weights(
    path: str | Path, model_cfg: ModelConfig | None = None, fix: str = "delete it and use another checkpoint"
) -> dict[str, np.ndarray]:
    """All model tensors by HF name (sharded `model.safetensors.index.json` too), checked against the config
    from the file headers before anything is read: names, shapes, floating-point dtypes; then finite values.
    Reads ours, transformers' and mlx_lm's directories; `fix` ends the message when a file is damaged."""
    path = Path(path)
    model_cfg = model_cfg or read_model_config(path)  # refuses what is not a model directory
    refuse_quantized(path)
    drop = tuple(f"{layer}.weight" for layer in ignored_layers(model_cfg))  # e.g. a tied head stored twice
    files = weight_files(path, fix=fix)
    return _read_checked(files, model_cfg, lambda: parameter_shapes(model_cfg), str(path), fix, drop)


def load_optimizer(
    path: str | Path, model_cfg: ModelConfig | None = None, optimizer: str = "adamw"
) -> dict[str, np.ndarray] | None:
    """The optimizer state for `training.optimizer` = `optimizer`, checked like the weights (names, shapes,
    finite values); None when the checkpoint has none. AdamW parameters have "<param>.exp_avg" /
    ".exp_avg_sq", Muon weights "<param>.momentum_buffer" (core.architecture.moment_names). A file written by the
    other optimizer is refused in one line: its moments cannot continue this run's update."""
    path = Path(path)
    file = path / "optimizer.safetensors"
    if not file.is_file():
        return None
    model_cfg = model_cfg or read_model_config(path)
    fix = "resume from another checkpoint, or start from its weights with training.init_from"
    saved = "muon" if any(n.endswith(".momentum_buffer") for n in _header(file, fix)) else "adamw"
    if saved != optimizer:
        raise CheckpointError(
            f"{file} holds {saved} state but training.optimizer is {optimizer}; resume with "
            f"--training.optimizer {saved}, or start from its weights with training.init_from"
        )
    return _read_checked([file], model_cfg, lambda: moment_shapes(model_cfg, optimizer), str(file), fix)


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
