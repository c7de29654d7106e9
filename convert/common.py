"""What every converter shares: one error type, all-or-nothing outputs, dtype casts, GGUF tensor names.

Outputs are written beside OUT under a hidden temporary name and renamed onto OUT only when the
whole conversion succeeded, so a failure (bad input, Ctrl-C, full disk) never leaves half a model.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core.checkpoint import BFLOAT16
from core.cli import UserError
from core.config import Config, ConfigError, ModelConfig, TrainingConfig, validate

# Our checkpoint dtypes (the trainers run float32 or bfloat16) and the numpy dtype of each.
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": BFLOAT16, "float16": np.dtype(np.float16)}
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16"}
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


def canonical_dtype(name: str) -> str:
    return DTYPE_ALIASES.get(name, name)


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


def dtype_name(weights: dict[str, np.ndarray]) -> str:
    """The name of the dtype most of the weights use (float32 / bfloat16 / float16)."""
    counts: dict[str, int] = {}
    for value in weights.values():
        name = next((k for k, v in DTYPES.items() if v == value.dtype), str(value.dtype))
        counts[name] = counts.get(name, 0) + value.size
    return max(counts, key=counts.get) if counts else "float32"


# ------------------------------------------------------------------------------ atomic outputs


def check_output(out: str | Path, force: bool) -> Path:
    """Refuse to overwrite OUT unless asked: called before any work so a typo costs nothing."""
    out = Path(out)
    if out.exists() and not force:
        raise ConvertError(f"{out} already exists; pass --force to replace it, or choose another output path")
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output(out: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `out`; it becomes `out` only if the block finishes without error."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            _remove(old)
        else:
            tmp.rename(out)
    except BaseException:
        _remove(tmp)
        raise


# ------------------------------------------------------------------------------ GGUF tensor names

_GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GGUF_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")


def hf_to_gguf_name(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight` (llama.cpp's llama names)."""
    match = _LAYER.match(name)
    if match:
        return f"blk.{match.group(1)}.{_GGUF_LAYER_NAMES[match.group(2)]}.weight"
    return _GGUF_TOP_NAMES[name.removesuffix(".weight")] + ".weight"


def gguf_names(hf_names) -> dict[str, str]:
    """GGUF name -> HF name for each of `hf_names`."""
    return {hf_to_gguf_name(name): name for name in hf_names}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved RoPE order (its convert_hf_to_gguf `permute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_qk`: llama.cpp's q/k rows back to HF's rotate-half order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def qk_heads(cfg: ModelConfig, hf_name: str) -> int | None:
    """How many heads a q/k projection's rows hold (the permutation's unit); None for other tensors."""
    if hf_name.endswith("self_attn.q_proj.weight"):
        return cfg.n_heads
    if hf_name.endswith("self_attn.k_proj.weight"):
        return cfg.n_kv_heads
    return None
