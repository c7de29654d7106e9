"""Muon for MLX: the update of core/muon.py as an `mlx.optimizers.Optimizer`, so it runs inside the compiled
step (train_mlx.build_step) like Adam; torch_model/muon.py is its twin."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim

from tinyllama.core.muon import NS_COEFFICIENTS, NS_EPS, NS_STEPS, muon_scale


def orthogonalize(update: mx.array, dtype: mx.Dtype = mx.float32) -> mx.array:
    """The Newton-Schulz approximation of update's nearest semi-orthogonal matrix, iterated in `dtype`,
    returned in fp32."""
    a, b, c = NS_COEFFICIENTS
    x = update.astype(mx.float32)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T  # iterate on the wide side: X X^T is the smaller Gram matrix
    x = x / (mx.linalg.norm(x) + NS_EPS)  # spectral norm <= Frobenius norm <= 1
    x = x.astype(dtype)
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return (x.T if tall else x).astype(mx.float32)


class Muon(optim.Optimizer):
    """Nesterov momentum, orthogonalised, scaled by shape; decoupled weight decay. `learning_rate` is the
    AdamW rate of the step (set on every optimizer of the MultiOptimizer); Muon runs at `lr_ratio` times it
    (muon_lr / lr), so both follow one schedule."""

    def __init__(
        self, learning_rate: float, lr_ratio: float, momentum: float, weight_decay: float, precision: str = "float32"
    ):
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)
        self.lr_ratio, self.momentum, self.weight_decay = lr_ratio, momentum, weight_decay
        self.ns_dtype = getattr(mx, precision)  # float32 | bfloat16 (core.config checks the choice)

    def init_single(self, parameter: mx.array, state: dict) -> None:
        state["momentum_buffer"] = mx.zeros(parameter.shape, dtype=mx.float32)  # fp32 even for bf16 weights

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        mu, g = self.momentum, gradient.astype(mx.float32)
        buf = mu * state["momentum_buffer"] + (1 - mu) * g
        state["momentum_buffer"] = buf
        x = orthogonalize((1 - mu) * g + mu * buf, self.ns_dtype)
        lr = self.learning_rate.astype(mx.float32) * self.lr_ratio
        p = parameter.astype(mx.float32)
        if self.weight_decay:
            p = p * (1 - lr * self.weight_decay)
        return (p - lr * muon_scale(parameter.shape) * x).astype(parameter.dtype)
