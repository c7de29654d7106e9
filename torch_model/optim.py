"""The torch optimizers (AdamW with the project's weight-decay rule; Muon for the block matrices when
training.optimizer is muon) and their state in the neutral checkpoint format.

Weight decay applies to the 2-D weights AdamW owns (core.architecture.Param.decayed), the same rule as MLX. The
neutral format (core.architecture.moment_names) is "<param>.exp_avg" / "<param>.exp_avg_sq" for AdamW, exactly
what torch's AdamW keeps per parameter, and "<param>.momentum_buffer" for Muon, in fp32; the step count
comes from trainer_state.json."""

from __future__ import annotations

import copy

import numpy as np
import torch

from tinyllama.core.architecture import optimizer_roles
from tinyllama.core.config import ModelConfig, TrainingConfig
from tinyllama.torch_model.muon import Muon
from tinyllama.torch_model.state import to_numpy, to_torch, unwrap


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer: what the trainer touches (param_groups for the lr, step,
    zero_grad, state_dict for on_nonfinite: skip) spans both."""

    def __init__(self, adamw: torch.optim.AdamW, muon: Muon):
        self.adamw, self.muon = adamw, muon

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    def step(self) -> None:
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])


def make_optimizer(
    model: torch.nn.Module, cfg: TrainingConfig, model_cfg: ModelConfig | None = None
) -> torch.optim.AdamW | MuonAdamW:
    """AdamW with the fused kernel on CUDA and CPU (one pass per tensor; faster than foreach, bench/loss.py);
    for muon, the weights core.architecture.optimizer_roles gives Muon go to Muon instead. `model_cfg`: the
    architecture of a model with HF names that is not ours (the benches' transformers model); default its own."""
    plain = unwrap(model)
    roles = optimizer_roles(model_cfg or plain.cfg, cfg.optimizer)
    named = list(plain.named_parameters())
    by_role = {role: [p for n, p in named if roles[n] == role] for role in ("muon", "decay", "plain")}
    groups = [
        {"params": by_role["decay"], "weight_decay": cfg.weight_decay},
        {"params": by_role["plain"], "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cuda", "cpu") for _, p in named) or None
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
    if not by_role["muon"]:
        return adamw
    ratio = cfg.muon_lr / cfg.lr
    muon = Muon(by_role["muon"], cfg.lr, ratio, cfg.muon_momentum, cfg.muon_weight_decay, cfg.muon_precision)
    return MuonAdamW(adamw, muon)


def _split(optimizer) -> tuple[torch.optim.AdamW, Muon | None]:
    return (optimizer.adamw, optimizer.muon) if isinstance(optimizer, MuonAdamW) else (optimizer, None)


def _roles(model: torch.nn.Module, muon: Muon | None) -> dict[str, str]:
    return optimizer_roles(unwrap(model).cfg, "muon" if muon is not None else "adamw")


def optimizer_state(model: torch.nn.Module, optimizer) -> dict[str, np.ndarray]:
    """The state as neutral fp32 numpy arrays ("<param>.exp_avg" / ".exp_avg_sq" / ".momentum_buffer");
    zeros for a parameter torch has not stepped yet (its state is created lazily), so every checkpoint can
    be resumed."""
    adamw, muon = _split(optimizer)
    roles = _roles(model, muon)
    out = {}
    for name, p in unwrap(model).named_parameters():
        if roles[name] == "muon":
            buf = muon.state.get(p, {}).get("momentum_buffer", torch.zeros_like(p))
            out[f"{name}.momentum_buffer"] = to_numpy(buf.float())
            continue
        state = adamw.state.get(p) or {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        out[f"{name}.exp_avg"] = to_numpy(state["exp_avg"].float())
        out[f"{name}.exp_avg_sq"] = to_numpy(state["exp_avg_sq"].float())
    return out


def load_optimizer_state(model: torch.nn.Module, optimizer, moments: dict[str, np.ndarray] | None, step: int) -> None:
    """Continue from neutral moments at `step` steps done (nothing to do for a fresh run)."""
    if moments is None:
        return
    adamw, muon = _split(optimizer)
    on_device = bool(adamw.defaults.get("fused") or adamw.defaults.get("capturable"))
    roles = _roles(model, muon)
    for name, p in unwrap(model).named_parameters():
        if roles[name] == "muon":
            if f"{name}.momentum_buffer" not in moments:
                raise ValueError(f"optimizer state lacks moments for '{name}'")
            muon.state[p] = {"momentum_buffer": _like(p, moments[f"{name}.momentum_buffer"]).float()}
            continue
        if f"{name}.exp_avg" not in moments or f"{name}.exp_avg_sq" not in moments:
            raise ValueError(f"optimizer state lacks moments for '{name}'")
        adamw.state[p] = {
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
    """Copies of the weights and optimizer state, to undo an update that training.on_nonfinite skip rejects."""
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(optimizer.state_dict())


@torch.no_grad()
def restore(model, optimizer, before) -> None:
    weights, state = before
    for p, saved in zip(model.parameters(), weights, strict=True):
        p.copy_(saved)
    optimizer.load_state_dict(state)
