"""Optional `flash-attn` kernels (hardware.attention: flash_attn) on CUDA, bf16/fp16 only."""

from __future__ import annotations

import torch

from tinyllama.core.cli import UserError
from tinyllama.torch_model.model import Attention, attend


def flash_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None):
    """Same contract as torch_model.model.attend; flash-attn wants (B, T, H, hd) and aligns the causal
    mask bottom-right (v2.1+), and takes GQA's fewer KV heads as they are. Packed rows (a block mask) go
    to torch's SDPA, whose memory-efficient kernel takes masks."""
    from flash_attn import flash_attn_func

    if mask is not None:
        return attend(q, k, v, scale, mask)
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=True)
    return out.transpose(1, 2)  # (B, H, T, hd)


def enable_flash_attn(model: torch.nn.Module) -> None:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        raise UserError(
            "hardware.attention is flash_attn but the flash-attn package is not installed; "
            "`pip install flash-attn --no-build-isolation` on a CUDA machine, or use --hardware.attention sdpa"
        ) from None
    if not torch.cuda.is_available():
        raise UserError("hardware.attention flash_attn needs a CUDA GPU; use --hardware.attention sdpa")
    for module in model.modules():
        if isinstance(module, Attention):
            module.attend = flash_attend
