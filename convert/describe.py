"""`inspect`: what a checkpoint (or GGUF file) holds, read from headers and JSON only.

No tensor is loaded: dtypes come from the safetensors headers, sizes from the filesystem, training
progress from trainer_state.json, so inspecting a multi-GB checkpoint is instant.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from tinyllama.convert.common import ConvertError
from tinyllama.core.architecture import count_parameters
from tinyllama.core.checkpoint import read_trainer_state
from tinyllama.core.cli import human_bytes, human_count
from tinyllama.core.model_files import read_hf_config, read_model_config

SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "U32": "uint32 (packed)"}


def _disk_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _weight_dtypes(path: Path) -> dict[str, int]:
    """Elements per dtype across the model's safetensors files (headers only)."""
    counts: Counter[str] = Counter()
    for file in sorted(path.glob("model*.safetensors")):
        try:
            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    size = 1
                    for dim in piece.get_shape():
                        size *= dim
                    counts[SAFETENSORS_DTYPES.get(piece.get_dtype(), piece.get_dtype())] += size
        except (SafetensorError, OSError) as exc:
            raise ConvertError(f"{file} is corrupt or truncated ({exc})") from None
    return dict(counts)


def describe_checkpoint(path: Path) -> dict[str, Any]:
    cfg = read_model_config(path)
    hf = read_hf_config(path)
    state = read_trainer_state(path)
    dtypes = _weight_dtypes(path)
    info: dict[str, Any] = {
        "path": str(path),
        "format": "checkpoint" if (path / "trainer_state.json").is_file() else "model directory",
        "config": {k: v for k, v in vars(cfg).items() if k != "init_std"},
        "parameters": count_parameters(cfg),
        "dtype": max(dtypes, key=dtypes.get) if dtypes else "unknown",
        "size_bytes": _disk_size(path),
        "weights_bytes": sum(_disk_size(f) for f in path.glob("model*.safetensors")),
        "optimizer_state": (path / "optimizer.safetensors").is_file(),
        "tokenizer": (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file(),
    }
    quant = hf.get("quantization") or hf.get("quantization_config")
    if quant:
        info["quantization"] = {k: quant[k] for k in ("bits", "group_size", "mode") if k in quant}
    for key in ("step", "tokens_seen", "backend", "loss", "val_loss", "lr", "imported_from"):
        if state.get(key) is not None:
            info[key] = state[key]
    return info


def describe_gguf(path: Path) -> dict[str, Any]:
    from tinyllama.convert.gguf_import import config_from_gguf, metadata, open_reader

    reader = open_reader(path)
    meta = metadata(reader)
    names = {t.name for t in reader.tensors}
    info: dict[str, Any] = {"path": str(path), "format": "gguf", "architecture": meta.get("general.architecture")}
    try:
        cfg = config_from_gguf(meta, names, str(path))
        info["config"] = {k: v for k, v in vars(cfg).items() if k != "init_std"}
        info["parameters"] = count_parameters(cfg)
    except ConvertError as exc:  # still worth describing: say why it would not import
        info["importable"] = str(exc).split(": ", 1)[-1]
    types = Counter(t.tensor_type.name for t in reader.tensors)
    info["dtype"] = ", ".join(f"{k} x{v}" for k, v in types.most_common())
    info["size_bytes"] = _disk_size(path)
    info["tokenizer"] = f"{meta.get('tokenizer.ggml.model')} (pre: {meta.get('tokenizer.ggml.pre', 'unset')})"
    return info


def describe(path: str | Path) -> dict[str, Any]:
    """A summary of a checkpoint / HF or MLX model directory / GGUF file."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"not found: {path} (pass a *.ckpt directory, a model directory or a .gguf file)")
    if path.is_file():
        return describe_gguf(path)
    return describe_checkpoint(path)


def format_info(info: dict[str, Any]) -> str:
    """Human-readable lines: sizes in kB/MB/GB, counts in k/M/B."""
    lines = [f"{'path':<14} {info['path']}", f"{'format':<14} {info['format']}"]
    if "config" in info:
        cfg = info["config"]
        shape = ", ".join(f"{k}={v}" for k, v in cfg.items())
        lines.append(f"{'config':<14} {shape}")
    if "parameters" in info:
        lines.append(f"{'parameters':<14} {human_count(info['parameters'])} ({info['parameters']:,})")
    lines.append(f"{'dtype':<14} {info['dtype']}")
    if "importable" in info:
        lines.append(f"{'import':<14} refused: {info['importable']}")
    if "quantization" in info:
        lines.append(f"{'quantization':<14} {json.dumps(info['quantization'])}")
    size = human_bytes(info["size_bytes"])
    if info.get("weights_bytes"):
        size += f" (weights {human_bytes(info['weights_bytes'])})"
    lines.append(f"{'size on disk':<14} {size}")
    if "optimizer_state" in info:
        lines.append(f"{'optimizer':<14} {'yes' if info['optimizer_state'] else 'no'}")
    tokenizer = info["tokenizer"]
    lines.append(f"{'tokenizer':<14} {tokenizer if isinstance(tokenizer, str) else ('yes' if tokenizer else 'no')}")
    for key, label in (
        ("step", "step"),
        ("tokens_seen", "tokens"),
        ("backend", "backend"),
        ("loss", "loss"),
        ("val_loss", "val loss"),
        ("lr", "lr"),
        ("imported_from", "imported from"),
    ):
        if key in info:
            value = info[key]
            if key == "tokens_seen":
                value = f"{human_count(value)} ({value:,})"
            elif isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(f"{label:<14} {value}")
    return "\n".join(lines)
