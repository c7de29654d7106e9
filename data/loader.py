"""Deterministic batches: batch b of step s on rank r is a pure function of (seed, s, micro_step, r, world_size).

The split is cut into windows of seq_len + 1 tokens at stride seq_len (x = window[:-1],
y = window[1:]). Sample number g = ((step * grad_accum + micro_step) * world_size + rank) * batch_size + b
walks through epochs: epoch g // n_windows uses a permutation seeded by (seed, epoch), and g picks
window perm[g % n_windows]. So ranks never share a window, each epoch sees every window exactly
once, resume needs only the step, and MLX and torch get the same tokens at the same step.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from tinyllama.data.util import DataError


class BatchLoader:
    """Random-access batches over a 1-D token array (np.memmap, ConcatTokens or ndarray)."""

    def __init__(
        self,
        tokens: Any,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
        split: str = "train",
    ) -> None:
        if seq_len < 1 or batch_size < 1 or grad_accum < 1 or world_size < 1:
            raise DataError("seq_len, batch_size, grad_accum and world_size must be positive")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.n_windows = max(0, (len(tokens) - 1) // seq_len)
        if self.n_windows < 1:
            fix = "raise data.val_fraction" if split == "val" else "add data"
            raise DataError(
                f"the {split} split has {len(tokens)} tokens, shorter than one sequence of {seq_len + 1} tokens "
                f"(seq_len + 1); lower training.seq_len or {fix}"
            )
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def samples_per_step(self) -> int:
        return self.grad_accum * self.world_size * self.batch_size

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perms[epoch] = perm
            if len(self._perms) > 2:  # a batch spans at most two epochs
                self._perms.popitem(last=False)
        return perm

    def windows(self, step: int, micro_step: int = 0) -> np.ndarray:
        """Window indices of this rank's micro-batch (step is 0-based: the first optimizer step is 0)."""
        if step < 0 or not 0 <= micro_step < self.grad_accum:
            raise DataError(f"step {step} / micro_step {micro_step} out of range (grad_accum {self.grad_accum})")
        first = ((step * self.grad_accum + micro_step) * self.world_size + self.rank) * self.batch_size
        out = np.empty(self.batch_size, np.int64)
        for b in range(self.batch_size):
            epoch, index = divmod(first + b, self.n_windows)
            out[b] = self.permutation(epoch)[index]
        return out

    def batch(self, step: int, micro_step: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int32 arrays of shape (batch_size, seq_len); y is x shifted left by one token."""
        buf = np.empty((self.batch_size, self.seq_len + 1), np.int32)
        for row, window in enumerate(self.windows(step, micro_step)):
            start = int(window) * self.seq_len
            buf[row] = self.tokens[start : start + self.seq_len + 1]
        return buf[:, :-1].copy(), buf[:, 1:].copy()


def val_windows(tokens: Any, seq_len: int, count: int = 0) -> np.ndarray:
    """The validation set, one definition for the trainers' eval and evaluate_checkpoints.py: `count`
    windows of seq_len + 1 tokens (0 = all), evenly spread over the split on the loader's window grid
    (stride seq_len), in order. Returns (count, seq_len + 1) int64; inputs [:, :-1], targets [:, 1:]."""
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise DataError(
            f"the val split has {len(tokens)} tokens, shorter than one sequence of {seq_len + 1} tokens "
            f"(seq_len + 1); lower training.seq_len or raise data.val_fraction"
        )
    picked = np.arange(n_windows) if count <= 0 or count >= n_windows else np.linspace(0, n_windows - 1, count)
    out = np.empty((len(picked), seq_len + 1), np.int64)
    for row, window in enumerate(picked.round().astype(np.int64)):
        out[row] = tokens[int(window) * seq_len : int(window) * seq_len + seq_len + 1]
    return out
