"""How train_cuda.py wraps the model for its hardware: flash-attn kernels, activation checkpointing, DDP or
FSDP2 under torchrun, torch.compile on CUDA; and what that means for the memory a step holds. The wrapped
model keeps HF parameter names (state.unwrap)."""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from tinyllama.core.training import MemoryTraits
from tinyllama.torch_model.loss import held_bytes, keep_eager_under_compile, plain_cross_entropy
from tinyllama.torch_model.model import Model

# What a compiled step keeps for its backward against an eager one (inductor recomputes norms, SwiGLU's gate
# and RoPE instead of saving them), as bench/compile_memory.py measures it (docs/benchmarks.md). --dry-run
# scales its activation estimate by it for compiled runs.
COMPILED_ACTIVATIONS = 0.78


def compiles(cfg, device: torch.device) -> bool:
    """Whether train_cuda.py compiles the model: training.compile, on CUDA only (on this project's 2-core CPU
    inductor compiles for minutes and the compiled step was not faster: docs/benchmarks.md)."""
    return cfg.training.compile and device.type == "cuda"


def memory_traits(cfg, device: torch.device, runtime_bytes: int) -> MemoryTraits:
    """What --dry-run's estimate needs to know of a torch step on `device` (core.training.estimate_memory)."""
    t, m = cfg.training, cfg.model
    compiled = compiles(cfg, device)
    with torch.device("meta"):  # one block of the model as the run builds it, no memory: does it transform logits?
        plain = plain_cross_entropy(Model(dataclasses.replace(m, n_layers=1)).logit_transform, t)
    tokens = t.batch_size * t.seq_len
    return MemoryTraits(
        loss_bytes=held_bytes(tokens, m.vocab_size, m.d_model, device.type, t.dtype, compiled, plain),
        runtime_bytes=runtime_bytes,
        fp32_weights=True,  # bf16 runs autocast over fp32 weights
        activation_scale=COMPILED_ACTIVATIONS if compiled else 1.0,
    )


def wrap_model(model, cfg, device):
    """DDP or FSDP2 under torchrun, activation checkpointing and torch.compile by config."""
    h = cfg.hardware
    if h.attention == "flash_attn":
        from tinyllama.torch_model.flash import enable_flash_attn

        enable_flash_attn(model)
    if h.activation_checkpointing:
        for block in model.model.layers:
            block.forward = _checkpointed(block.forward)
    if dist.is_initialized() and h.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
    elif dist.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compiles(cfg, device):
        keep_eager_under_compile()
        model = torch.compile(model)
    return model


def _checkpointed(forward):
    from torch.utils.checkpoint import checkpoint

    return lambda *args: checkpoint(forward, *args, use_reentrant=False)
