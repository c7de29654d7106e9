"""The learning-rate schedule: a pure function of the step, so resume needs only the step."""

from __future__ import annotations

import math

from tinyllama.core.config import TrainingConfig


def lr_at(step: int, cfg: TrainingConfig, total_steps: int) -> float:
    """The AdamW learning rate of optimizer step `step` (0-based, the step about to run).

    Both schedules warm up linearly from lr/warmup to lr over `warmup_steps`. Then `cosine` decays to
    `min_lr` along a half cosine (reaching it after the last step); `wsd` (warmup-stable-decay) holds lr
    and decays linearly over the last `decay_fraction` of the steps, so that the last step runs at min_lr.
    Muon's rate is `muon_lr * lr_at(...) / lr` (`muon_lr_at`): one multiplier for both optimizers."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_start = max(cfg.warmup_steps, total_steps - round(cfg.decay_fraction * total_steps))
        if step < decay_start:
            return cfg.lr
        progress = min(1.0, (step - decay_start + 1) / (total_steps - decay_start))
        return cfg.lr + progress * (cfg.min_lr - cfg.lr)
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def muon_lr_at(step: int, cfg: TrainingConfig, total_steps: int) -> float:
    """Muon's learning rate: `muon_lr` times the schedule's multiplier (lr_at / lr)."""
    return cfg.muon_lr * lr_at(step, cfg, total_steps) / cfg.lr


def total_steps(cfg: TrainingConfig, world_size: int = 1) -> int:
    """`max_tokens` (when set) wins over `max_steps`: steps = ceil(max_tokens / tokens per step)."""
    if cfg.max_tokens > 0:
        per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * world_size
        return max(1, math.ceil(cfg.max_tokens / per_step))
    return cfg.max_steps
