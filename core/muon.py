"""Muon's constants and shape rule, written once for both backends (mlx_model/muon.py, torch_model/muon.py).

Muon (Keller Jordan, modded-nanogpt; nanochat) keeps one momentum buffer per matrix and applies, instead of
the buffer itself, its nearest semi-orthogonal matrix, found by a few Newton-Schulz iterations:

    buf = mu * buf + (1 - mu) * g               (an EMA, as torch.optim.Muon's lerp)
    u   = (1 - mu) * g + mu * buf               (Nesterov)
    X   = u / (||u||_F + eps), transposed when tall, then NS_STEPS times:
          A = X X^T;  X = a X + (b A + c A A) X
    p   = p * (1 - lr * wd) - lr * scale(shape) * X      (decoupled decay, then the update)

All in fp32 by default, so both backends compute the same update to 1e-5 and a run resumes on either.
`training.muon_precision: bfloat16` runs the Newton-Schulz matmuls in bf16 (the iteration tolerates it: it
only needs singular values pushed towards 1), as torch.optim.Muon and modded-nanogpt do: several times
faster where bf16 matmuls are, at the cost of that cross-backend agreement (the backends round differently).
torch.optim.Muon always iterates in bf16 and mlx.optimizers.Muon couples its weight decay into the gradient,
so neither library optimizer computes this update; the twins do, line for line.
"""

from __future__ import annotations

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # quintic, maximising the slope at zero
NS_STEPS = 5
NS_EPS = 1e-7


def muon_scale(shape: tuple[int, ...]) -> float:
    """sqrt(max(1, rows / cols)): a tall matrix's orthogonalised update has smaller entries; this gives every
    matrix the same per-element RMS (Keller Jordan's "original" rule, torch.optim.Muon's default)."""
    rows, cols = shape[0], shape[1]
    return max(1.0, rows / cols) ** 0.5
