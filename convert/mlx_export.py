"""Our checkpoint -> an MLX-quantized model directory, through mlx-lm's own quantization.

Using `mlx_lm.convert` (not our own packing) means the result is exactly what `mlx_lm.load` and
`mlx_lm.generate` expect: config.json gains `quantization` / `quantization_config`
({"group_size", "bits", "mode"}) and every quantized Linear/Embedding stores `.weight` (uint32,
packed), `.scales` and `.biases` (per group). mlx-lm skips layers whose input size is not a multiple
of the group size, silently, so that case is refused here instead.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from convert.common import ConvertError, check_output
from core.checkpoint import read_model_config
from core.fs import atomic_path

Q_BITS = (2, 3, 4, 5, 6, 8)
MLX_DTYPES = ("float16", "bfloat16", "float32")


def export_mlx(
    ckpt: str | Path,
    out: str | Path,
    *,
    q_bits: int = 4,
    q_group_size: int = 64,
    dtype: str | None = None,
    force: bool = False,
) -> Path:
    """Quantize the checkpoint's linear layers and embedding to `q_bits` with mlx-lm and save it."""
    if q_bits not in Q_BITS:
        raise ConvertError(f"--q-bits {q_bits} is not supported; choose one of {', '.join(map(str, Q_BITS))}")
    if q_group_size not in (32, 64, 128):
        raise ConvertError(f"--q-group-size {q_group_size} is not supported; choose 32, 64 or 128")
    if dtype is not None and dtype not in MLX_DTYPES:
        raise ConvertError(f"--dtype {dtype} is not supported; choose one of {', '.join(MLX_DTYPES)}")
    out = check_output(out, force)
    cfg = read_model_config(ckpt)
    ckpt = Path(ckpt)
    if not (ckpt / "tokenizer.json").is_file() and not (ckpt / "tokenizer_config.json").is_file():
        raise ConvertError(f"{ckpt} has no tokenizer; mlx_lm.load needs one (train with a tokenizer or import one)")
    sizes = {"d_model": cfg.d_model, "heads x head_dim": cfg.n_heads * cfg.resolved_head_dim}
    for what, size in sizes.items():
        if size % q_group_size:
            fits = [g for g in (32, 64, 128) if all(s % g == 0 for s in sizes.values())]
            fix = f"use --q-group-size {fits[-1]}" if fits else "no group size (32, 64, 128) divides it"
            raise ConvertError(f"{what} ({size}) is not a multiple of --q-group-size {q_group_size}; {fix}")
    if cfg.d_ff % q_group_size:
        print(f"note: d_ff ({cfg.d_ff}) % {q_group_size} != 0: mlx-lm keeps down_proj unquantized", file=sys.stderr)

    from mlx_lm.convert import convert

    with atomic_path(out) as tmp, contextlib.redirect_stdout(sys.stderr):
        convert(str(ckpt), mlx_path=str(tmp), quantize=True, q_group_size=q_group_size, q_bits=q_bits, dtype=dtype)
    return out
