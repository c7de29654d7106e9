"""A serving batch in PyTorch: rows at different positions decoded in one forward pass (twin of mlx_model/batch.py).

A server's continuous batch (server/engine.py, through core.generate.RowBatch): new requests are prefilled
through the usual KV cache (the same call infer.py makes), their keys and values are copied into free rows
of one buffer per layer, and each decode step then runs every row's next token at once. Rows sit at their
own positions: each writes its key at its own length, RoPE turns each query and key by its own position
(RoPE.forward with a (B,) offset) and attention masks the positions a row has not reached (its RowCache's
mask). A step of rows all at one length, a lone request's above all, runs without a mask: the same calls as
torch_model.generate.Decoder. A row that finishes is replaced by the last row (one row copied).
"""

from __future__ import annotations

import numpy as np
import torch

from tinyllama.torch_model.generate import last_logits
from tinyllama.torch_model.model import Model


class RowCache:
    """One layer's keys/values for rows at different positions, in the attention's KVCache interface: the
    step's (B,) positions as `offset`, where `update` writes each row's key, and the (B, 1, 1, S) `mask` of the
    keys each row holds (None when all rows hold the same number)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values  # (max_rows, KV, capacity, hd)
        self.offset: torch.Tensor | None = None  # (B,) each row's position this step
        self.rows: torch.Tensor | None = None  # (B,) 0..B-1
        self.mask: torch.Tensor | None = None  # (B, 1, 1, span) bool
        self.span = 0  # positions attended this step: the longest row's, new key included

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = keys.shape[0]  # keys: (B, KV, 1, hd)
        self.keys[self.rows, :, self.offset] = keys[:, :, 0]
        self.values[self.rows, :, self.offset] = values[:, :, 0]
        return self.keys[:B, :, : self.span], self.values[:B, :, : self.span]  # (B, KV, span, hd) views


class RowBatch:
    """Up to `max_rows` rows decoded together (core.generate.RowBatch); buffers grow in steps of 256 positions
    as the longest row grows, up to the model's max_seq_len."""

    step_size = 256

    def __init__(self, model: Model, max_rows: int):
        self.model, self.max_rows = model, max_rows
        self.device = next(model.parameters()).device
        self.layers: list[RowCache] = []
        self.lengths = np.zeros(max_rows, dtype=np.int64)  # positions each row holds
        self.rows = 0
        self.capacity = 0

    def _reserve(self, positions: int, like: list) -> None:
        """Room for `positions` per row (`like`: a prefill's caches, for the shapes and dtype)."""
        if positions <= self.capacity:
            return
        limit = self.model.cfg.max_seq_len
        capacity = min(max(positions, -(-positions // self.step_size) * self.step_size), max(limit, positions))
        layers = []
        for i, c in enumerate(like):
            _, kv, _, hd = c.keys.shape
            keys = c.keys.new_zeros(self.max_rows, kv, capacity, hd)
            values = c.values.new_zeros(self.max_rows, kv, capacity, hd)
            if self.layers:
                keys[:, :, : self.capacity] = self.layers[i].keys
                values[:, :, : self.capacity] = self.layers[i].values
            layers.append(RowCache(keys, values))
        self.layers, self.capacity = layers, capacity

    @torch.inference_mode()
    def prefill(self, prompts: np.ndarray) -> torch.Tensor:
        k, T = prompts.shape  # (k, T) equal-length prompts
        if self.rows + k > self.max_rows:
            raise ValueError(f"{self.rows} + {k} rows exceed max_rows {self.max_rows}")
        cache = self.model.make_cache()
        logits = last_logits(self.model, torch.as_tensor(prompts, dtype=torch.long, device=self.device), cache)
        self._reserve(T + 1, cache)
        new = slice(self.rows, self.rows + k)
        for layer, c in zip(self.layers, cache, strict=True):
            layer.keys[new, :, :T] = c.keys[:, :, :T]
            layer.values[new, :, :T] = c.values[:, :, :T]
        self.lengths[new] = T
        self.rows += k
        return logits.float()  # (k, V)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray) -> torch.Tensor:
        B = self.rows
        lengths = self.lengths[:B]
        span = int(lengths.max()) + 1
        if span > self.model.cfg.max_seq_len:
            raise ValueError(f"sequence position {span} exceeds max_seq_len {self.model.cfg.max_seq_len}")
        self._reserve(span, self.layers)
        offset = torch.as_tensor(lengths, device=self.device)  # (B,)
        mask = None
        if (lengths != lengths[0]).any():
            mask = (torch.arange(span, device=self.device) <= offset[:, None])[:, None, None, :]  # (B, 1, 1, span)
        rows = torch.arange(B, device=self.device)
        for layer in self.layers:
            layer.offset, layer.rows, layer.mask, layer.span = offset, rows, mask, span
        ids = torch.as_tensor(tokens, dtype=torch.long, device=self.device)[:, None]  # (B, 1)
        logits = last_logits(self.model, ids, self.layers)  # (B, V)
        self.lengths[:B] += 1
        return logits.float()

    def drop(self, row: int) -> None:
        last = self.rows - 1
        if row != last:
            with torch.inference_mode():
                for layer in self.layers:
                    layer.keys[row] = layer.keys[last]
                    layer.values[row] = layer.values[last]
            self.lengths[row] = self.lengths[last]
        self.rows = last

    @staticmethod
    def to_host(out: torch.Tensor) -> np.ndarray:
        return out.cpu().numpy()
