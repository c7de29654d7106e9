"""What every converter shares: one error type, the refusal to overwrite, dtype casts.

Outputs are written through core.fs.atomic_path: beside OUT under a hidden temporary name, renamed onto
OUT only when the whole conversion succeeded, so a failure (bad input, Ctrl-C, full disk) never leaves
half a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.cli import UserError
from core.config import Config, ConfigError, ModelConfig, TrainingConfig, validate
from core.weights import DTYPES, canonical_dtype

FP16_MAX = 65504.0


class ConvertError(UserError):
    """Bad input for a conversion: one line naming the problem and the fix, exit code 2."""


def check_model_config(cfg: ModelConfig, source: str) -> ModelConfig:
    """Apply core.config's invariants (heads divide, even head dim, ...) to an imported config."""
    try:
        validate(Config(model=cfg, training=TrainingConfig(seq_len=min(256, max(cfg.max_seq_len, 1)))))
    except ConfigError as exc:
        raise ConvertError(f"{source}: {exc}") from None
    return cfg


def tokenizer_dir_arg(path: str | Path) -> Path:
    """A --tokenizer DIR argument, checked: a directory holding tokenizer.json."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise ConvertError(f"--tokenizer {path}: expected a directory containing tokenizer.json")
    return path


def cast_weights(weights: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Every tensor in `dtype`; refuses an fp16 cast that would overflow to inf instead of writing it."""
    target = DTYPES[canonical_dtype(dtype)]
    out = {}
    for name, value in weights.items():
        if value.dtype == target:
            out[name] = value
            continue
        as_f32 = value.astype(np.float32)
        if target == np.float16 and np.abs(as_f32).max(initial=0.0) > FP16_MAX:
            raise ConvertError(f"tensor '{name}' has values beyond fp16's range (65504); export with --dtype bf16")
        out[name] = as_f32.astype(target)
    return out


# ------------------------------------------------------------------------------ outputs


def check_output(out: str | Path, force: bool) -> Path:
    """Refuse to overwrite OUT unless asked: called before any work so a typo costs nothing."""
    out = Path(out)
    if out.exists() and not force:
        raise ConvertError(f"{out} already exists; pass --force to replace it, or choose another output path")
    return out
