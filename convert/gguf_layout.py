"""How a Llama model lays out in a GGUF file: llama.cpp's tensor names and its q/k row order.

Used both ways: gguf_export.py writes with these names and permutes q/k rows, gguf_import.py undoes it.
"""

from __future__ import annotations

import re

import numpy as np

from tinyllama.core.config import ModelConfig

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
