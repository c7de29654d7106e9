"""How a model lays out in a GGUF file: llama.cpp's tensor names (declared in core/architecture.py) and, for
its `llama` architecture, its q/k row order.

Used both ways: gguf_export.py writes with these names and permutes q/k rows, gguf_import.py undoes it.
"""

from __future__ import annotations

import numpy as np

from tinyllama.core.architecture import FORMATS, architecture, parameters
from tinyllama.core.config import ModelConfig


def gguf_names(cfg: ModelConfig) -> dict[str, str]:
    """GGUF name -> HF name for every parameter of `cfg`, from the names core.architecture declares
    (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`, llama.cpp's names)."""
    names = {}
    for name, param in parameters(cfg).items():
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        names[f"blk.{layer}.{param.gguf}.weight" if layer is not None else f"{param.gguf}.weight"] = name
    return names


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved RoPE order (its convert_hf_to_gguf `permute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_qk`: llama.cpp's q/k rows back to HF's rotate-half order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def qk_heads(cfg: ModelConfig, hf_name: str) -> int | None:
    """How many heads a q/k projection's rows hold (the permutation's unit), where the model's GGUF architecture
    permutes them (llama, not the rotate-half ones); None for other tensors and architectures."""
    arch = architecture(cfg)
    if arch is None or not FORMATS[arch].gguf_permutes_qk:
        return None
    if hf_name.endswith("self_attn.q_proj.weight"):
        return cfg.n_heads
    if hf_name.endswith("self_attn.k_proj.weight"):
        return cfg.n_kv_heads
    return None
