"""Our checkpoint -> an MLX-quantized model directory, through mlx-lm's own quantization.

Using `mlx_lm.convert` (not our own packing) means the result is exactly what `mlx_lm.load` and
`mlx_lm.generate` expect: config.json gains `quantization` / `quantization_config`
({"group_size", "bits", "mode"}) and every quantized Linear/Embedding stores `.weight` (uint32,
packed), `.scales` and `.biases` (per group). mlx-lm skips layers whose input size is not a multiple
of the group size, silently, so that case is refused here instead.

mlx-lm is never pointed at the checkpoint itself: it would take config.json as is (`model_file`,
`auto_map`), copy any `*.py` beside it and quantize integer or NaN weights without a word. It reads a
staging directory instead: our config.json rebuilt from the checked ModelConfig, links to the weight files
after core.checkpoint.load_weights verified them, and the checked tokenizer files.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

from tinyllama.convert.common import (
    ConvertError,
    check_expressible,
    check_output,
    check_space,
    load_checked_weights,
    prepare_tokenizer,
    writing,
)
from tinyllama.core.architecture import count_parameters
from tinyllama.core.dtypes import canonical_dtype, weights_dtype
from tinyllama.core.hf_config import to_hf_config
from tinyllama.core.model_files import read_hf_config, read_json_object, read_model_config, weight_files

Q_BITS = (2, 3, 4, 5, 6, 8)
Q_GROUP_SIZES = (32, 64, 128)
MLX_DTYPES = ("float16", "bfloat16", "float32")
FIX = "use another checkpoint"


def check_quantization(q_bits: int, q_group_size: int) -> None:
    """The installed mlx itself on one tiny matrix: one line before the conversion when mlx is missing or
    cannot quantize so."""
    try:
        import mlx.core as mx
        import mlx_lm  # noqa: F401
    except ImportError as exc:
        raise ConvertError(f"export-mlx needs mlx and mlx-lm ({exc}); pip install mlx-lm") from None
    try:
        mx.eval(mx.quantize(mx.zeros((1, 4 * q_group_size)), group_size=q_group_size, bits=q_bits))
    except (ValueError, RuntimeError) as exc:
        raise ConvertError(
            f"--q-bits {q_bits} --q-group-size {q_group_size}: this mlx cannot quantize so ({exc}); "
            f"choose --q-bits 4 or 8"
        ) from None


def stage_source(ckpt: Path, staging: Path, cfg, tok_dir: Path, dtype: str) -> None:
    """What mlx-lm reads: a rebuilt config.json, the checked tokenizer, links to the verified weight files."""
    hf = read_hf_config(ckpt)
    ids = {
        k: hf[f"{k}_token_id"] if _token_id(hf.get(f"{k}_token_id"), cfg.vocab_size) else None for k in ("bos", "eos")
    }
    config = to_hf_config(cfg, ids["bos"], ids["eos"], dtype=dtype)
    (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = ckpt / "generation_config.json"
    if generation.is_file():
        (staging / "generation_config.json").write_text(json.dumps(read_json_object(generation, FIX), indent=2) + "\n")
    for file in tok_dir.iterdir():
        file.rename(staging / file.name)
    files = weight_files(ckpt, FIX)
    for i, file in enumerate(files, 1):
        (staging / f"model-{i:05d}-of-{len(files):05d}.safetensors").symlink_to(file.resolve())


def _token_id(value, vocab_size: int) -> bool:
    return type(value) is int and 0 <= value < vocab_size


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
    if q_group_size not in Q_GROUP_SIZES:
        raise ConvertError(f"--q-group-size {q_group_size} is not supported; choose 32, 64 or 128")
    dtype = None if dtype is None else canonical_dtype(dtype)
    if dtype is not None and dtype not in MLX_DTYPES:
        raise ConvertError(f"--dtype {dtype} is not supported; choose one of {', '.join(MLX_DTYPES)}")
    out = check_output(out, force, source=ckpt)
    ckpt = Path(ckpt)
    cfg = read_model_config(ckpt)
    check_expressible(ckpt, cfg, "mlx_lm")
    sizes = {"d_model": cfg.d_model, "heads x head_dim": cfg.n_heads * cfg.resolved_head_dim}
    for what, size in sizes.items():
        if size % q_group_size:
            fits = [g for g in Q_GROUP_SIZES if all(s % g == 0 for s in sizes.values())]
            fix = f"use --q-group-size {fits[-1]}" if fits else "no group size (32, 64, 128) divides it"
            raise ConvertError(f"{what} ({size}) is not a multiple of --q-group-size {q_group_size}; {fix}")

    with tempfile.TemporaryDirectory() as tmp_tok, tempfile.TemporaryDirectory() as staging:
        tok_dir = prepare_tokenizer(ckpt, Path(tmp_tok), cfg.vocab_size)
        if tok_dir is None:
            raise ConvertError(f"{ckpt} has no tokenizer; mlx_lm.load needs one (train with a tokenizer or import one)")
        source_dtype = weights_dtype(load_checked_weights(ckpt, cfg, FIX))  # verified, then let go
        check_quantization(q_bits, q_group_size)
        from mlx_lm.convert import convert

        stage_source(ckpt, Path(staging), cfg, tok_dir, source_dtype)
        check_space(out, count_parameters(cfg) * q_bits // 8)
        log = io.StringIO()
        with writing(out, extra=(RuntimeError,)) as tmp:
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    convert(
                        staging, mlx_path=str(tmp), quantize=True, q_group_size=q_group_size, q_bits=q_bits, dtype=dtype
                    )
            except (ValueError, KeyError, TypeError) as exc:
                raise ConvertError(f"{ckpt}: mlx_lm cannot convert it ({exc}); {FIX}") from None
    sys.stderr.write(log.getvalue())
    if cfg.d_ff % q_group_size:
        print(f"note: d_ff ({cfg.d_ff}) % {q_group_size} != 0: mlx-lm keeps down_proj unquantized", file=sys.stderr)
    return out
