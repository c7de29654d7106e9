"""The batch loader is a pure function of (seed, step, micro_step, rank, world_size)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyllama.data.loader import BatchLoader, val_windows
from tinyllama.data.store import ConcatTokens
from tinyllama.data.util import DataError

SEQ = 8


def corpus(n_windows: int = 50, seq_len: int = SEQ) -> np.ndarray:
    # window w holds tokens w*seq .. w*seq+seq, so a window's first token identifies it
    return np.arange(n_windows * seq_len + 1, dtype=np.uint16)


def window_ids(x: np.ndarray) -> list[int]:
    return [int(row[0]) // SEQ for row in x]


def test_shapes_dtype_and_shift():
    loader = BatchLoader(corpus(), SEQ, batch_size=4, seed=1)
    x, y = loader.batch(0)
    assert x.shape == y.shape == (4, SEQ)
    assert x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(y, x + 1)  # consecutive ids in this corpus


def test_same_seed_same_batches_and_restart():
    a = BatchLoader(corpus(), SEQ, 4, seed=7, grad_accum=2)
    first = [a.batch(s, m) for s in range(30) for m in range(2)]
    # a "restarted" process that starts at step 17 sees exactly what the first one saw there
    b = BatchLoader(corpus(), SEQ, 4, seed=7, grad_accum=2)
    for s in (17, 3, 29):
        for m in range(2):
            np.testing.assert_array_equal(b.batch(s, m)[0], first[2 * s + m][0])
            np.testing.assert_array_equal(b.batch(s, m)[1], first[2 * s + m][1])
    c = BatchLoader(corpus(), SEQ, 4, seed=8, grad_accum=2)
    assert any(not np.array_equal(c.batch(s)[0], a.batch(s)[0]) for s in range(5))


def test_epoch_covers_every_window_once():
    loader = BatchLoader(corpus(48), SEQ, batch_size=4, seed=3)
    seen = [w for step in range(12) for w in window_ids(loader.batch(step)[0])]  # 12 * 4 = 48 = one epoch
    assert sorted(seen) == list(range(48))
    second = [w for step in range(12, 24) for w in window_ids(loader.batch(step)[0])]
    assert sorted(second) == list(range(48)) and second != seen  # a new permutation per epoch


def test_ranks_disjoint_and_union_is_global_order():
    world, steps = 3, 4
    loaders = [BatchLoader(corpus(200), SEQ, 4, seed=5, rank=r, world_size=world, grad_accum=2) for r in range(world)]
    per_rank = [[w for s in range(steps) for m in range(2) for w in window_ids(ld.batch(s, m)[0])] for ld in loaders]
    flat = [w for ws in per_rank for w in ws]
    assert len(flat) == len(set(flat)) == world * steps * 2 * 4
    # the same global sample order as one big rank: g = ((step*accum + micro)*world + rank)*batch + b
    single = BatchLoader(corpus(200), SEQ, 4 * world, seed=5, grad_accum=2)
    for s in range(steps):
        for m in range(2):
            big = window_ids(single.batch(s, m)[0])
            small = [w for ld in loaders for w in window_ids(ld.batch(s, m)[0])]
            assert big == small


def test_batches_across_an_epoch_boundary():
    loader = BatchLoader(corpus(10), SEQ, batch_size=4, seed=0)
    windows = [w for s in range(5) for w in window_ids(loader.batch(s)[0])]  # 20 samples = 2 epochs exactly
    assert sorted(windows[:10]) == sorted(windows[10:]) == list(range(10))


def test_concat_tokens_gives_same_batches_as_one_array():
    whole = corpus(37)
    parts = [whole[:50], whole[50:51], whole[51:200], whole[200:]]
    view = ConcatTokens(parts)
    assert len(view) == len(whole)
    np.testing.assert_array_equal(view[45:210], whole[45:210])
    assert view[200] == whole[200] and view[-1] == whole[-1]
    a, b = BatchLoader(whole, SEQ, 5, seed=2), BatchLoader(view, SEQ, 5, seed=2)
    for s in range(10):
        np.testing.assert_array_equal(a.batch(s)[0], b.batch(s)[0])


def test_corpus_shorter_than_one_sequence():
    with pytest.raises(DataError, match=r"shorter than one sequence of 9 tokens.*lower training.seq_len"):
        BatchLoader(np.arange(8, dtype=np.uint16), SEQ, 2, seed=0)
    BatchLoader(np.arange(9, dtype=np.uint16), SEQ, 2, seed=0)  # exactly one window is enough
    with pytest.raises(DataError, match="val split.*raise data.val_fraction"):
        val_windows(np.arange(3, dtype=np.uint16), SEQ, 1)


def test_val_windows_spread_evenly_over_the_split_in_order():
    tokens = corpus(50)
    picked = val_windows(tokens, SEQ, 5)
    assert picked.shape == (5, SEQ + 1) and picked.dtype == np.int64
    assert window_ids(picked) == [0, 12, 24, 37, 49]  # first and last window included, evenly between
    np.testing.assert_array_equal(picked[2], tokens[24 * SEQ : 25 * SEQ + 1])
    assert window_ids(val_windows(tokens, SEQ)) == list(range(50))  # 0: all windows
    assert window_ids(val_windows(tokens, SEQ, 500)) == list(range(50))  # more than there are: all
    np.testing.assert_array_equal(val_windows(tokens, SEQ, 5), picked)  # a pure function of its inputs


def test_bad_rank_and_micro_step():
    with pytest.raises(DataError):
        BatchLoader(corpus(), SEQ, 2, seed=0, rank=2, world_size=2)
    with pytest.raises(DataError):
        BatchLoader(corpus(), SEQ, 2, seed=0, grad_accum=2).batch(0, micro_step=2)
