"""The learning-rate schedule: a pure function of the step, so resume needs only the step."""

from __future__ import annotations

import math

from tinyllama.core.config import TrainingConfig


def lr_at(step: int, cfg: TrainingConfig, total_steps: int) -> float:
    """Linear warmup from lr/warmup to lr over `warmup_steps`, then cosine decay to `min_lr`.

    `step` is the 0-based index of the optimizer step about to run."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def total_steps(cfg: TrainingConfig, world_size: int = 1) -> int:
    """`max_tokens` (when set) wins over `max_steps`: steps = ceil(max_tokens / tokens per step)."""
    if cfg.max_tokens > 0:
        per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * world_size
        return max(1, math.ceil(cfg.max_tokens / per_step))
    return cfg.max_steps
