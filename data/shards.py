"""Token shards written one by one, and the progress manifest that lets a killed prepare resume.

A prepare builds `<cache>/prepared/.<name>-<key>.partial/`. Each split's tokens go to
`<split>-00000.bin`, `<split>-00001.bin`, ... of exactly `shard_tokens` tokens (the last one shorter):
the shard being filled is `<split>-0000k.bin.part`, fsynced and renamed to its final name the moment it
is full, so a final name always holds a whole shard. After a batch that ends a document, and only if a
shard was finished since the last time, `progress.json` is replaced atomically with what a resume needs:
the shard list with the token count of the one being filled, how many documents were read, the val
split's counters. A kill anywhere loses at most the work since that manifest: the resume truncates the
`.part` file back to the recorded length, deletes shards the manifest does not list, skips the
documents already read (read again, never re-tokenized) and carries on. When the stream ends, the
directory gets meta.json and is renamed to its final name in one step (core.fs.atomic_path).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyllama.core.fs import fsync_dir, remove, write_json

PART = ".part"
PROGRESS = "progress.json"
PROGRESS_FORMAT = 1
SPLITS = ("train", "val")
SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per file: quick to copy or re-make, few enough to list


class ShardWriter:
    """Appends token arrays to `<split>-00000.bin`, `<split>-00001.bin`, ... of at most shard_tokens each.

    `shards` (from a progress manifest) restores a writer; `resume_shards` has checked them on disk."""

    def __init__(
        self,
        directory: Path,
        split: str,
        dtype: np.dtype,
        shard_tokens: int = SHARD_TOKENS,
        shards: list[dict[str, Any]] | None = None,
    ) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, np.dtype(dtype), shard_tokens
        self.shards: list[dict[str, Any]] = [dict(s) for s in shards or []]
        self.tokens = sum(s["tokens"] for s in self.shards)
        self._handle: Any = None

    @property
    def finished(self) -> int:
        """Shards that are full (under their final names)."""
        return sum(s["tokens"] >= self.shard_tokens for s in self.shards)

    def _open(self) -> None:
        if self.shards and self.shards[-1]["tokens"] < self.shard_tokens:  # the partial shard of a resume
            self._handle = open(self.directory / (self.shards[-1]["file"] + PART), "r+b")
            self._handle.seek(0, os.SEEK_END)
            return
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self.shards.append({"file": name, "tokens": 0})
        self._handle = open(self.directory / (name + PART), "wb")

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens, dtype=self.dtype)
        while tokens.size:
            if self._handle is None:
                self._open()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, tokens = tokens[:room], tokens[room:]
            self._handle.write(part.tobytes())
            self.shards[-1]["tokens"] += int(part.size)
            self.tokens += int(part.size)
            if self.shards[-1]["tokens"] >= self.shard_tokens:
                self.close_file()

    def sync(self) -> None:
        """Flush the shard being filled to disk (before a manifest records its length)."""
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close_file(self) -> None:
        """Finish the current shard: fsync it and give it its final name."""
        if self._handle is not None:
            self.sync()
            self._handle.close()
            self._handle = None
            name = self.shards[-1]["file"]
            os.replace(self.directory / (name + PART), self.directory / name)

    def abort(self) -> None:
        """Close after a failure without flushing again: on a full disk a later flush (at garbage collection)
        would print 'Exception ignored' noise under the one error line."""
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass

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


@dataclass
class Progress:
    """What a resume needs (progress.json): where the stream stands and what is on disk."""

    key: str
    shard_tokens: int
    dtype: str
    documents_read: int = 0
    val_split: tuple[int, int] = (0, 0)  # ValSplit's (total, val) counters: UTF-8 bytes of the documents
    documents: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    shards: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"train": [], "val": []})

    def save(self, directory: Path) -> None:
        record = {"format": PROGRESS_FORMAT, **self.__dict__, "val_split": list(self.val_split)}
        write_json(directory / PROGRESS, record)


def _shards_ok(directory: Path, split: str, shards: Any, shard_tokens: int, itemsize: int) -> bool:
    """Make the split's files match the manifest (truncate the partial shard, delete unlisted files); False
    when that is impossible (a listed shard is missing or short)."""
    if not isinstance(shards, list):
        return False
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or shard.get("file") != f"{split}-{i:05d}.bin":
            return False
        tokens = shard.get("tokens")
        if not isinstance(tokens, int) or not 0 <= tokens <= shard_tokens:
            return False
        final, part = directory / shard["file"], directory / (shard["file"] + PART)
        if tokens == shard_tokens:  # finished: renamed before the manifest was written
            if not final.is_file() or final.stat().st_size != tokens * itemsize:
                return False
            continue
        if i != len(shards) - 1:
            return False
        if final.is_file() and not part.exists():  # it filled up (or the run ended) after the manifest
            final.rename(part)
        if not part.is_file() or part.stat().st_size < tokens * itemsize:
            return False
        os.truncate(part, tokens * itemsize)
    listed = {s["file"] for s in shards} | {s["file"] + PART for s in shards}
    for path in directory.glob(f"{split}-*.bin*"):
        if path.name not in listed:
            path.unlink()
    return True


def resume_progress(directory: Path, key: str, shard_tokens: int, dtype: np.dtype) -> Progress | None:
    """The progress of a killed prepare of the same inputs in `directory`, its files made to match it; None
    (and `directory` emptied) when there is none or it cannot be trusted."""
    try:
        record = json.loads((directory / PROGRESS).read_text(encoding="utf-8"))
        progress = Progress(
            key=record["key"],
            shard_tokens=record["shard_tokens"],
            dtype=record["dtype"],
            documents_read=int(record["documents_read"]),
            val_split=(int(record["val_split"][0]), int(record["val_split"][1])),
            documents={split: int(record["documents"][split]) for split in SPLITS},
            shards={split: record["shards"][split] for split in SPLITS},
        )
        same = (record["format"], progress.key, progress.shard_tokens, progress.dtype) == (
            PROGRESS_FORMAT,
            key,
            shard_tokens,
            np.dtype(dtype).name,
        )
        if same and all(
            _shards_ok(directory, s, progress.shards[s], shard_tokens, np.dtype(dtype).itemsize) for s in SPLITS
        ):
            fsync_dir(directory)
            return progress
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass
    if directory.exists():
        remove(directory)
    return None
