"""AdamW for MLX that performs torch's exact update, and its state in the neutral checkpoint format.

MLX's `Adam(bias_correction=True)` computes torch's Adam step (same eps placement); decoupled weight
decay `p *= 1 - lr * wd` is applied first, to 2-D weights only, as torch's AdamW does per group.
The neutral format is "<param>.exp_avg" / "<param>.exp_avg_sq" in fp32; the step count lives in
trainer_state.json."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from tinyllama.core.config import TrainingConfig
from tinyllama.core.weights import is_decayed
from tinyllama.mlx_model.state import to_numpy


def make_optimizer(cfg: TrainingConfig) -> optim.Adam:
    return optim.Adam(learning_rate=cfg.lr, betas=list(cfg.betas), eps=cfg.eps, bias_correction=True)


def apply_weight_decay(model: nn.Module, lr: mx.array, weight_decay: float) -> None:
    """Decoupled weight decay on 2-D weights (matrices, embeddings), never on norm gains."""
    if weight_decay == 0:
        return
    decayed = [
        (name, p * (1 - lr * weight_decay).astype(p.dtype)) if is_decayed(p.ndim) else (name, p)
        for name, p in tree_flatten(model.trainable_parameters())
    ]
    model.update(tree_unflatten(decayed))


def optimizer_state(optimizer: optim.Optimizer) -> dict[str, np.ndarray]:
    """The moments as "<param>.exp_avg" / "<param>.exp_avg_sq" fp32 numpy arrays."""
    out = {}
    for name, value in tree_flatten(optimizer.state):
        if name.endswith(".m"):
            out[name[:-2] + ".exp_avg"] = to_numpy(value.astype(mx.float32))
        elif name.endswith(".v"):
            out[name[:-2] + ".exp_avg_sq"] = to_numpy(value.astype(mx.float32))
    return out


def load_optimizer_state(
    optimizer: optim.Optimizer, model: nn.Module, moments: dict[str, np.ndarray] | None, step: int
) -> None:
    """Initialise the optimizer for `model`; with `moments`, continue from them at `step` steps done."""
    optimizer.init(model.trainable_parameters())
    if moments is None:
        return
    params = dict(tree_flatten(model.trainable_parameters()))
    missing = [n for n in params if f"{n}.exp_avg" not in moments or f"{n}.exp_avg_sq" not in moments]
    if missing:
        raise ValueError(f"optimizer state lacks moments for '{missing[0]}'")
    state = tree_map(lambda x: x, optimizer.state)
    flat = []
    for name, p in params.items():
        flat.append((name + ".m", mx.array(moments[f"{name}.exp_avg"]).astype(p.dtype)))
        flat.append((name + ".v", mx.array(moments[f"{name}.exp_avg_sq"]).astype(p.dtype)))
    state.update(tree_unflatten(flat))
    state["step"] = mx.array(step, dtype=mx.uint64)
    optimizer.state = state
    mx.eval(optimizer.state)
