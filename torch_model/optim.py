"""torch AdamW with the project's weight-decay rule, and its state in the neutral checkpoint format.

Weight decay applies to 2-D weights only (core.weights.is_decayed), the same rule as MLX. The
neutral format is "<param>.exp_avg" / "<param>.exp_avg_sq" in fp32 plus the step count from
trainer_state.json, which is exactly what torch's AdamW keeps per parameter."""

from __future__ import annotations

import copy

import numpy as np
import torch

from tinyllama.core.config import TrainingConfig
from tinyllama.core.weights import is_decayed
from tinyllama.torch_model.state import to_numpy, to_torch, unwrap


def make_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel on CUDA and CPU (one pass per tensor; ~7x foreach on CPU, bench/loss.py)."""
    params = list(unwrap(model).parameters())
    groups = [
        {"params": [p for p in params if is_decayed(p.ndim)], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if not is_decayed(p.ndim)], "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cuda", "cpu") for p in params) or None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """The moments as "<param>.exp_avg" / "<param>.exp_avg_sq" fp32 numpy arrays; zeros for a parameter torch
    has not stepped yet (its state is created lazily), so every checkpoint can be resumed."""
    out = {}
    for name, p in unwrap(model).named_parameters():
        state = optimizer.state.get(p) or {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        out[f"{name}.exp_avg"] = to_numpy(state["exp_avg"].float())
        out[f"{name}.exp_avg_sq"] = to_numpy(state["exp_avg_sq"].float())
    return out


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, moments: dict[str, np.ndarray] | None, step: int
) -> None:
    """Continue from neutral moments at `step` steps done (nothing to do for a fresh run)."""
    if moments is None:
        return
    on_device = bool(optimizer.defaults.get("fused") or optimizer.defaults.get("capturable"))
    for name, p in unwrap(model).named_parameters():
        if f"{name}.exp_avg" not in moments or f"{name}.exp_avg_sq" not in moments:
            raise ValueError(f"optimizer state lacks moments for '{name}'")
        optimizer.state[p] = {
            "step": torch.tensor(float(step), dtype=torch.float32, device=p.device if on_device else "cpu"),
            "exp_avg": _like(p, moments[f"{name}.exp_avg"]),
            "exp_avg_sq": _like(p, moments[f"{name}.exp_avg_sq"]),
        }


def _like(param: torch.Tensor, full: np.ndarray) -> torch.Tensor:
    """A moment placed like its parameter: same device and dtype, sharded the same way under FSDP2."""
    tensor = to_torch(full).to(device=param.device, dtype=param.dtype)
    if hasattr(param, "device_mesh"):  # a DTensor parameter (FSDP2)
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(tensor, param.device_mesh, param.placements)
    return tensor


def snapshot(model, optimizer):
    """Copies of the weights and AdamW state, to undo an update that training.on_nonfinite skip rejects."""
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(optimizer.state_dict())


@torch.no_grad()
def restore(model, optimizer, before) -> None:
    weights, state = before
    for p, saved in zip(model.parameters(), weights, strict=True):
        p.copy_(saved)
    optimizer.load_state_dict(state)
