"""Deterministic batches: batch b of step s on rank r is a pure function of (seed, s, micro_step, r, world_size).

The split is cut into windows of seq_len + 1 tokens at stride seq_len (x = window[:-1],
y = window[1:]). Sample number g = ((step * grad_accum + micro_step) * world_size + rank) * batch_size + b
walks through epochs: epoch g // n_windows uses a permutation seeded by (seed, epoch), and g picks
window perm[g % n_windows]. So ranks never share a window, each epoch sees every window exactly
once, resume needs only the step, and MLX and torch get the same tokens at the same step.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
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

    def windows(self, step: int, micro_step: int = 0, rank: int | None = None) -> np.ndarray:
        """Window indices of this rank's (or `rank`'s) micro-batch (step is 0-based: the first step is 0)."""
        if step < 0 or not 0 <= micro_step < self.grad_accum:
            raise DataError(f"step {step} / micro_step {micro_step} out of range (grad_accum {self.grad_accum})")
        rank = self.rank if rank is None else rank
        first = ((step * self.grad_accum + micro_step) * self.world_size + rank) * self.batch_size
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

    def denominator(self, step: int) -> float:
        """What each micro-batch's summed loss is divided by: the step's targets over all ranks and
        micro-batches / (grad_accum * world), so the step's gradient is the mean over all its targets."""
        return float(self.batch_size * self.seq_len)


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


# --- packed conversations (data.format chat / completions) ---------------------------------------------

TRAIN, STARTS = 1, 2  # mask bits (data/chat.py): the token is learnt as a target; a conversation starts here


def pack(masks: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Conversations packed in order into rows of at most row_len tokens, each row a contiguous slice
    [start, stop) of the split; a conversation longer than a row gets a row of its own, cut to row_len.
    Returns (starts, stops, number of cut conversations)."""
    firsts = np.flatnonzero(np.asarray(masks) & STARTS)
    lasts = np.append(firsts[1:], len(masks))
    rows: list[list[int]] = []  # [start, stop] of each row
    cut = 0
    for first, last in zip(firsts.tolist(), lasts.tolist(), strict=True):
        if rows and last - rows[-1][0] <= row_len:
            rows[-1][1] = last  # fits in the open row
            continue
        rows.append([first, min(last, first + row_len)])
        cut += last - first > row_len
    bounds = np.asarray(rows, np.int64).reshape(-1, 2)
    return bounds[:, 0].copy(), bounds[:, 1].copy(), cut


def packed_rows(
    tokens: Any, masks: Any, starts: np.ndarray, stops: np.ndarray, rows: np.ndarray, row_len: int, pad: int
):
    """(x, y, segments), each (len(rows), row_len - 1): y is -1 where no loss is taken (prompts, padding,
    the first token of a conversation); segments number the conversations of a row from 1 (0 = padding),
    so attention stays inside a conversation (core: the models' `segments`)."""
    buf = np.full((len(rows), row_len), pad, np.int64)
    bits = np.zeros((len(rows), row_len), np.uint8)
    for i, row in enumerate(rows.tolist()):
        start, stop = int(starts[row]), int(stops[row])
        buf[i, : stop - start] = tokens[start:stop]
        bits[i, : stop - start] = masks[start:stop]
    segments = np.cumsum((bits & STARTS) > 0, axis=1, dtype=np.int32)
    segments[np.arange(row_len)[None, :] >= (stops[rows] - starts[rows])[:, None]] = 0  # padding
    y = np.where(bits[:, 1:] & TRAIN, buf[:, 1:], -1).astype(np.int32)
    return buf[:, :-1].astype(np.int32), y, segments[:, :-1]


class PackedLoader(BatchLoader):
    """BatchLoader over packed rows of conversations instead of windows: the same order (a permutation per
    epoch of (seed, epoch)), so resume and cross-backend resume stay exact; batches are (x, y, segments)."""

    def __init__(self, tokens: Any, masks: Any, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1, pad: int = 0) -> None:  # fmt: skip
        super().__init__(tokens, seq_len, batch_size, seed, rank, world_size, grad_accum)
        self.masks, self.pad = masks, pad
        bits = np.asarray(masks)  # read once: one byte per token
        self.starts, self.stops, self.cut = pack(bits, seq_len + 1)
        self.n_windows = len(self.starts)
        if self.n_windows < 1:
            raise DataError("the train split holds no conversation; add conversations")
        # targets with a loss per row: learnt tokens after the row's first (a row's first is never a target)
        self.row_targets = np.array(
            [
                np.count_nonzero(bits[s + 1 : e] & TRAIN)
                for s, e in zip(self.starts.tolist(), self.stops.tolist(), strict=True)
            ],
            np.int64,
        )
        self.fill = float((self.stops - self.starts).sum() / (self.n_windows * (seq_len + 1)))

    def batch(self, step: int, micro_step: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, segments), each (batch_size, seq_len) int32; y is -1 where no loss is taken."""
        rows = self.windows(step, micro_step)
        return packed_rows(self.tokens, self.masks, self.starts, self.stops, rows, self.seq_len + 1, self.pad)

    def denominator(self, step: int) -> float:
        rows = [self.windows(step, m, r) for m in range(self.grad_accum) for r in range(self.world_size)]
        targets = int(self.row_targets[np.concatenate(rows)].sum())
        return max(1, targets) / (self.grad_accum * self.world_size)


@dataclass
class Rows:
    """Packed validation rows: inputs, targets (-1: no loss) and segment ids, each (N, seq_len)."""

    x: np.ndarray
    y: np.ndarray
    segments: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: slice) -> Rows:
        return Rows(self.x[index], self.y[index], self.segments[index])

    def max(self) -> int:
        """The largest token id (as ndarray.max() of text windows: checked against the model's vocab)."""
        return int(max(self.x.max(initial=0), self.y.max(initial=0)))


def val_rows(tokens: Any, masks: Any, seq_len: int, count: int = 0, pad: int = 0) -> Rows:
    """The validation set of a conversation split: `count` packed rows (0 = all) evenly spread, in order."""
    starts, stops, _ = pack(masks, seq_len + 1)
    if not len(starts):
        raise DataError("the val split holds no conversation; raise data.val_fraction")
    picked = np.arange(len(starts)) if count <= 0 or count >= len(starts) else np.linspace(0, len(starts) - 1, count)
    return Rows(*packed_rows(tokens, masks, starts, stops, picked.round().astype(np.int64), seq_len + 1, pad))
