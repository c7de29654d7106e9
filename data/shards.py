"""Token shards on disk: raw little-endian uint16/uint32 files, written in order, read as memmaps.

Raw files (not .npy, never pickles) so any tool can read them: np.fromfile(path, dtype).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import DataError

SHARD_TOKENS = 1 << 28  # 512 MiB of uint16 per file: small enough to copy, few enough to list


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65536), uint32 beyond; larger vocabs are refused."""
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    if vocab_size <= 1 << 32:
        return np.dtype("<u4")
    raise DataError(f"vocab size {vocab_size} does not fit uint32 token files; use a tokenizer under 2**32 ids")


class ShardWriter:
    """Appends token arrays to `<split>-00000.bin`, `<split>-00001.bin`, ... of at most shard_tokens each."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int = SHARD_TOKENS) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, np.dtype(dtype), shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._handle: Any = None
        self.tokens = 0

    def _open_next(self) -> None:
        self.close_file()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self.shards.append({"file": name, "tokens": 0})
        self._handle = open(self.directory / name, "wb")

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens, dtype=self.dtype)
        while tokens.size:
            if self._handle is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, tokens = tokens[:room], tokens[room:]
            self._handle.write(part.tobytes())
            self.shards[-1]["tokens"] += int(part.size)
            self.tokens += int(part.size)

    def close_file(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def take_tail(self, count: int) -> np.ndarray:
        """Remove and return the last `count` tokens (they may span shards)."""
        self.close_file()
        parts = []
        while count > 0 and self.shards:
            last = self.shards[-1]
            path = self.directory / last["file"]
            n = min(count, last["tokens"])
            data = np.memmap(path, self.dtype, "r", shape=(last["tokens"],))
            parts.append(np.array(data[last["tokens"] - n :]))
            del data
            os.truncate(path, (last["tokens"] - n) * self.dtype.itemsize)
            last["tokens"] -= n
            self.tokens -= n
            count -= n
            if last["tokens"] == 0:
                path.unlink()
                self.shards.pop()
        return np.concatenate(parts[::-1]) if parts else np.empty(0, self.dtype)


class ConcatTokens:
    """Several memmapped shards seen as one 1-D array: len(), integer and slice (step 1) indexing."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.dtype = parts[0].dtype
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]),)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("ConcatTokens supports only contiguous slices")
            return self._range(start, max(start, stop))
        i = index + len(self) if index < 0 else index
        if not 0 <= i < len(self):
            raise IndexError(f"token index {index} out of range for {len(self)} tokens")
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[part][i - self.offsets[part]]

    def _range(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        out = []
        while start < stop:
            base = int(self.offsets[first])
            take = min(stop, int(self.offsets[first + 1])) - start
            out.append(self.parts[first][start - base : start - base + take])
            start += take
            first += 1
        if len(out) == 1:
            return out[0]
        return np.concatenate(out) if out else np.empty(0, self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._range(0, len(self))
        return whole if dtype is None else whole.astype(dtype)


def open_split(directory: Path, shards: list[dict[str, Any]], dtype: np.dtype) -> np.ndarray | ConcatTokens:
    """The split's tokens: one memmap, a ConcatTokens over several, or an empty array."""
    parts = [np.memmap(directory / s["file"], dtype, "r", shape=(s["tokens"],)) for s in shards if s["tokens"]]
    if not parts:
        return np.empty(0, dtype)
    return parts[0] if len(parts) == 1 else ConcatTokens(parts)
