"""The decode-time key/value cache of mlx_model/model.py; torch_model/cache.py is its twin."""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """Keys/values of past positions, grown in steps of 256; `offset` is the number filled."""

    step = 256
    mask = None  # every row holds the same positions (mlx_model/batch.py's RowCache holds a mask)

    def __init__(self):
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        B, n_kv_heads, T, head_dim = keys.shape  # (B, n_kv_heads, T, head_dim)
        start = self.offset
        if self.keys is None or start + T > self.keys.shape[2]:
            n_new = (T + self.step - 1) // self.step * self.step
            new_k = mx.zeros((B, n_kv_heads, n_new, head_dim), keys.dtype)
            new_v = mx.zeros((B, n_kv_heads, n_new, head_dim), values.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[:, :, :start], new_k], axis=2)
                self.values = mx.concatenate([self.values[:, :, :start], new_v], axis=2)
        self.offset += T
        self.keys[:, :, start : self.offset] = keys
        self.values[:, :, start : self.offset] = values
        return self.keys[:, :, : self.offset], self.values[:, :, : self.offset]
