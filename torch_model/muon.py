"""Muon for torch: the update of core/muon.py as a `torch.optim.Optimizer`; mlx_model/muon.py is its twin.

Not `torch.optim.Muon`: it always orthogonalises in bf16, so it cannot match MLX (or a resumed MLX run) to
fp32 precision; here bf16 is a choice (`training.muon_precision`). Under DDP every rank holds the
all-reduced gradient and computes the same update; FSDP2 shards the matrices, which the orthogonalisation
needs whole (core.config refuses that pairing)."""

from __future__ import annotations

import platform

import torch

from tinyllama.core.muon import NS_COEFFICIENTS, NS_EPS, NS_STEPS, muon_scale


def orthogonalize(updates: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Newton-Schulz approximation of each update's nearest semi-orthogonal matrix, iterated in `dtype`,
    returned in fp32; `updates` (N, rows, cols) is a stack of same-shaped matrices (one batched matmul each
    time: ~15% faster on a CPU than N small ones)."""
    a, b, c = NS_COEFFICIENTS
    x = updates.float()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT  # iterate on the wide side: X X^T is the smaller Gram matrix
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + NS_EPS)  # spectral norm <= Frobenius norm <= 1
    x = x.to(dtype)
    for _ in range(NS_STEPS):
        gram = x @ x.mT  # (N, rows, rows)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a X + (b A + c A A) X
    return (x.mT if tall else x).float()


def slow_bf16_matmul(device: torch.device) -> bool:
    """Whether bf16 matmuls run slower than fp32 ones here: an x86 CPU without AMX or AVX512-BF16 has no bf16
    matmul instructions, so each product is converted and computed the slow way (the Newton-Schulz iterations
    of a Muon step in bf16 take many times fp32's, docs/benchmarks.md)."""
    if device.type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # torch >= 2.8; older: unknown, say nothing
    return bool(capabilities) and not (capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised, scaled by shape; decoupled weight decay. A group's `lr` is the AdamW
    rate of the step (the trainer sets every group alike); Muon runs at `lr_ratio` times it (muon_lr / lr)."""

    def __init__(
        self, params, lr: float, lr_ratio: float, momentum: float, weight_decay: float, precision: str = "float32"
    ):
        super().__init__(params, {"lr": lr, "lr_ratio": lr_ratio, "momentum": momentum, "weight_decay": weight_decay})
        self.ns_dtype = getattr(torch, precision)  # float32 | bfloat16 (core.config checks the choice)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            mu, lr = group["momentum"], group["lr"] * group["lr_ratio"]
            by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g, alpha=1 - mu)
                by_shape.setdefault(tuple(p.shape), []).append((p, (1 - mu) * g + mu * buf))
            for shape, items in by_shape.items():
                updates = orthogonalize(torch.stack([u for _, u in items]), self.ns_dtype)  # (N, rows, cols)
                for (p, _), x in zip(items, updates, strict=True):
                    if group["weight_decay"]:
                        p.mul_(1 - lr * group["weight_decay"])
                    p.add_(x.to(p.dtype), alpha=-lr * muon_scale(shape))
        return None
