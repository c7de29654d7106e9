"""A prepared token directory: meta.json + token shards + the tokenizer that made them.

```
<cache_dir>/prepared/<name>-<key>/
  meta.json          source, tokenizer fingerprint, vocab size, dtype, token/document counts, shards
  train-00000.bin    raw uint16/uint32 tokens, documents joined by EOS
  val-00000.bin
  tokenizer/         tokenizer.json, tokenizer_config.json, special_tokens_map.json
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import DataError
from data.shards import ConcatTokens, open_split, token_dtype
from data.tokenizer import Tokenizer

FORMAT = 1
SPLITS = ("train", "val")


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a prepared directory after checking that every shard it lists is whole."""
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise DataError(f"{path}: no meta.json; not a prepared data directory (run python -m data.prepare)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise DataError(f"{meta_file}: not valid JSON; delete {path} and prepare again") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: prepared with format {meta.get('format')}, expected {FORMAT}; prepare again")
    dtype = np.dtype(meta["dtype"])
    vocab = int(meta["tokenizer"]["vocab_size"])
    if dtype.itemsize < token_dtype(vocab).itemsize:
        raise DataError(
            f"{path}: tokens stored as {dtype.name} cannot hold a vocab of {vocab}; delete it and prepare again"
        )
    for split in SPLITS:
        for shard in meta["shards"][split]:
            file = path / shard["file"]
            expected = shard["tokens"] * dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise DataError(f"{file}: missing or not {expected} bytes; delete {path} and prepare again")
    return meta


@dataclass
class PreparedData:
    """What the trainers get: the tokenizer, meta.json, and each split's tokens as a 1-D array."""

    path: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer

    @classmethod
    def open(cls, path: str | Path, tokenizer: Tokenizer | None = None) -> PreparedData:
        """Open and check a prepared directory; `tokenizer` (already loaded, same fingerprint) skips a reload."""
        path = Path(path)
        meta = read_meta(path)
        expected = meta["tokenizer"]["fingerprint"]
        if tokenizer is None or tokenizer.fingerprint() != expected:
            tokenizer = Tokenizer.from_dir(path / "tokenizer", name=meta["tokenizer"]["spec"])
            if tokenizer.fingerprint() != expected:
                raise DataError(
                    f"{path / 'tokenizer'} (fingerprint {tokenizer.fingerprint()}) is not the tokenizer meta.json "
                    f"names ({expected}); delete {path} and prepare again"
                )
        return cls(path, meta, tokenizer)

    @property
    def tokenizer_dir(self) -> Path:
        """A directory to copy into checkpoints (tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
        return self.path / "tokenizer"

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def tokens(self, split: str = "train") -> np.ndarray | ConcatTokens:
        """Read-only memmap (or shard-spanning view) of a split: supports len() and [start:stop]."""
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        return open_split(self.path, self.meta["shards"][split], self.dtype)

    def check_model_vocab(self, model_vocab_size: int) -> None:
        """Fail before training when the model's embedding table is smaller than the tokenizer's vocab."""
        if model_vocab_size < self.vocab_size:
            raise DataError(
                f"model.vocab_size ({model_vocab_size}) is smaller than the tokenizer's vocab ({self.vocab_size}, "
                f"{self.meta['tokenizer']['spec']}); set model.vocab_size to at least {self.vocab_size}"
            )
