"""The decode-time key/value cache of torch_model/model.py; mlx_model/cache.py is its twin."""

from __future__ import annotations

import torch


class KVCache:
    """Keys/values of past positions in a preallocated buffer, grown in steps of 256 positions (never
    past `max_len`, the model's max_seq_len) so a decode step writes in place; `offset` is the number filled."""

    step = 256
    mask = None  # every row holds the same positions (torch_model/batch.py's RowCache holds a mask)

    def __init__(self, max_len: int | None = None):
        self.keys: torch.Tensor | None = None  # (B, n_kv_heads, capacity, head_dim)
        self.values: torch.Tensor | None = None
        self.offset = 0
        self.max_len = max_len

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, n_kv_heads, T, head_dim = keys.shape  # (B, n_kv_heads, T, head_dim)
        start = self.offset
        if self.keys is None or start + T > self.keys.shape[2]:
            capacity = (start + T + self.step - 1) // self.step * self.step
            if self.max_len is not None:
                capacity = max(min(capacity, self.max_len), start + T)  # past max_len RoPE refuses first
            new_k = keys.new_zeros(B, n_kv_heads, capacity, head_dim)
            new_v = values.new_zeros(B, n_kv_heads, capacity, head_dim)
            if self.keys is not None:
                new_k[:, :, :start], new_v[:, :, :start] = self.keys[:, :, :start], self.values[:, :, :start]
            self.keys, self.values = new_k, new_v
        self.offset += T
        self.keys[:, :, start : self.offset] = keys
        self.values[:, :, start : self.offset] = values
        return self.keys[:, :, : self.offset], self.values[:, :, : self.offset]  # (B, KV, offset, hd) views
