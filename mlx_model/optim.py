"""The MLX optimizers (AdamW with torch's exact update; Muon for the block matrices when training.optimizer
is muon) and their state in the neutral checkpoint format.

MLX's `Adam(bias_correction=True)` computes torch's Adam step (same eps placement); decoupled weight
decay `p *= 1 - lr * wd` is applied first, to the 2-D weights AdamW owns, as torch's AdamW does per group.
With muon, an `optim.MultiOptimizer` sends the weights `core.architecture.optimizer_roles` names to
`mlx_model.muon.Muon` and the rest to Adam. The neutral format (core.architecture.moment_names) is
"<param>.exp_avg" / "<param>.exp_avg_sq" for AdamW and "<param>.momentum_buffer" for Muon, in fp32; the
step count lives in trainer_state.json."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from tinyllama.core.architecture import moment_names, optimizer_roles
from tinyllama.core.config import ModelConfig, TrainingConfig
from tinyllama.mlx_model.muon import Muon
from tinyllama.mlx_model.state import to_numpy

ADAM_NAMES = {"m": "exp_avg", "v": "exp_avg_sq"}  # MLX's Adam state -> torch's names


def make_optimizer(cfg: TrainingConfig, model_cfg: ModelConfig) -> optim.Optimizer:
    """Adam, or Muon + Adam (a MultiOptimizer: one `learning_rate` setter, one state tree) for muon."""
    adam = optim.Adam(learning_rate=cfg.lr, betas=list(cfg.betas), eps=cfg.eps, bias_correction=True)
    if cfg.optimizer != "muon":
        return adam
    muon = Muon(cfg.lr, cfg.muon_lr / cfg.lr, cfg.muon_momentum, cfg.muon_weight_decay, cfg.muon_precision)
    roles = optimizer_roles(model_cfg, "muon")
    return optim.MultiOptimizer([muon, adam], [lambda name, _: roles[name] == "muon"])


def _parts(optimizer: optim.Optimizer) -> list[optim.Optimizer]:
    return list(getattr(optimizer, "optimizers", [optimizer]))


def apply_weight_decay(model: nn.Module, lr: mx.array, weight_decay: float, optimizer: str = "adamw") -> None:
    """AdamW's decoupled weight decay on 2-D weights (matrices, embeddings), never on norm gains, nor on the
    weights Muon owns (Muon decays those itself, at its own rate): core.architecture.optimizer_roles."""
    if weight_decay == 0:
        return
    roles = optimizer_roles(model.cfg, optimizer)
    decayed = [
        (name, p * (1 - lr * weight_decay).astype(p.dtype)) if roles[name] == "decay" else (name, p)
        for name, p in tree_flatten(model.trainable_parameters())
    ]
    model.update(tree_unflatten(decayed))


def optimizer_state(optimizer: optim.Optimizer) -> dict[str, np.ndarray]:
    """The state as neutral fp32 numpy arrays: "<param>.exp_avg" / ".exp_avg_sq" / ".momentum_buffer"."""
    out = {}
    for part in _parts(optimizer):
        for name, value in tree_flatten(part.state):
            param, _, key = name.rpartition(".")
            key = ADAM_NAMES.get(key, key) if isinstance(part, optim.Adam) else key
            if key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                out[f"{param}.{key}"] = to_numpy(value.astype(mx.float32))
    return out


def load_optimizer_state(
    optimizer: optim.Optimizer, model: nn.Module, moments: dict[str, np.ndarray] | None, step: int
) -> None:
    """Initialise the optimizer for `model`; with `moments`, continue from them at `step` steps done."""
    optimizer.init(model.trainable_parameters())
    if moments is None:
        return
    roles = optimizer_roles(model.cfg, "muon" if len(_parts(optimizer)) > 1 else "adamw")
    params = dict(tree_flatten(model.trainable_parameters()))
    missing = [n for n in params if any(m not in moments for m in moment_names(n, roles[n]))]
    if missing:
        raise ValueError(f"optimizer state lacks moments for '{missing[0]}'")
    for part in _parts(optimizer):
        flat = []
        for name, _ in tree_flatten(part.state):
            param, _, key = name.rpartition(".")
            if isinstance(part, optim.Adam) and key in ADAM_NAMES:
                flat.append((name, mx.array(moments[f"{param}.{ADAM_NAMES[key]}"]).astype(params[param].dtype)))
            elif key == "momentum_buffer":
                flat.append((name, mx.array(moments[name])))  # fp32, as Muon keeps it
        state = tree_map(lambda x: x, part.state)
        state.update(tree_unflatten(flat))
        state["step"] = mx.array(step, dtype=mx.uint64)
        part.state = state
    mx.eval(optimizer.state)


def restore_state(optimizer: optim.Optimizer, saved: dict) -> None:
    """Put back a state tree saved as `tree_map(lambda a: a, optimizer.state)` (on_nonfinite: skip), in
    place: the compiled step holds the optimizer's state dicts themselves, so replacing them would leave it
    updating the rejected ones."""
    trees = saved["states"] if len(_parts(optimizer)) > 1 else [saved]
    for part, tree in zip(_parts(optimizer), trees, strict=True):
        part.state.clear()
        part.state.update(tree)
