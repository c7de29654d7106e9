"""Prepared token directories on disk: meta.json + raw token shards + the tokenizer that made them.

```
<cache_dir>/prepared/<name>-<key>/
  meta.json          source, tokenizer fingerprint, vocab size, dtype, token/document counts, shards
  train-00000.bin    raw uint16/uint32 tokens, documents joined by EOS
  val-00000.bin
  tokenizer/         tokenizer.json, tokenizer_config.json, special_tokens_map.json
```

Shards are raw little-endian uint16/uint32 files (not .npy, never pickles), written in order and read
as memmaps, so any tool can read them: np.fromfile(path, dtype).

A directory is trusted only after `read_meta` has checked meta.json's every key and type and each shard's
size: a damaged cache is rebuilt by prepare, and a damaged directory given as data.dataset is one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyllama.data.loader import BatchLoader, PackedLoader, Rows, val_rows, val_windows
from tinyllama.data.shards import SHARD_TOKENS, SPLITS, ShardWriter  # noqa: F401 (re-exported)
from tinyllama.data.token_bytes import token_bytes
from tinyllama.data.tokenizer import Tokenizer
from tinyllama.data.util import DataError, json_type, os_reason, stable_hash

FORMAT = 1
MATCH_KEYS = ("dataset", "max_documents", "tokenizer", "val_fraction")  # what makes a prepared val split ours
# how prepare splits text corpora (meta.json "split"): whole documents by their UTF-8 bytes, so every tokenizer
# gets the same val text; directories made before it ("split" absent) counted tokens
SPLIT_RULE = "document bytes"
DTYPES = ("uint16", "uint32")
# meta.json keys whose type the code relies on (prepare's summary, signature(), find_prepared, open())
META_FIELDS = {
    "source": {"spec": str, "description": str},
    "tokenizer": {"spec": str, "fingerprint": str, "vocab_size": int, "eos_id": int},
    "tokens": {"train": int, "val": int},
}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65536), uint32 beyond; larger vocabs are refused."""
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    if vocab_size <= 1 << 32:
        return np.dtype("<u4")
    raise DataError(f"vocab size {vocab_size} does not fit uint32 token files; use a tokenizer under 2**32 ids")


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


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def meta_problem(meta: Any) -> str | None:
    """What makes a meta.json unusable (a wrong type, a missing key, shards that disagree with the counts), or
    None. Checked once here so no later `meta[...]` can end in a KeyError or TypeError."""
    if not isinstance(meta, dict):
        return f"holds a JSON {json_type(meta)}, not an object"
    if meta.get("format") != FORMAT:
        return f"format is {meta.get('format')!r}, this version reads format {FORMAT}"
    if meta.get("dtype") not in DTYPES:
        return f"dtype is {meta.get('dtype')!r}, not one of {', '.join(DTYPES)}"
    for section, fields in META_FIELDS.items():
        if not isinstance(meta.get(section), dict):
            return f"'{section}' is missing or not an object"
        for key, kind in fields.items():
            value = meta[section].get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and not _is_count(value)):
                return f"'{section}.{key}' is missing or not a {'count' if kind is int else 'string'}"
    shards = meta.get("shards")
    if not isinstance(shards, dict) or not all(isinstance(shards.get(split), list) for split in SPLITS):
        return "'shards' is missing or not {train: [...], val: [...]}"
    for split in SPLITS:
        for shard in shards[split]:
            file = shard.get("file") if isinstance(shard, dict) else None
            if not _plain_name(file):
                return f"a '{split}' shard has no plain file name"
            if not _is_count(shard.get("tokens")):
                return f"shard {file} has no token count"
        listed = sum(shard["tokens"] for shard in shards[split])
        if listed != meta["tokens"][split]:
            return f"the '{split}' shards hold {listed} tokens, but tokens.{split} says {meta['tokens'][split]}"
    masks = meta.get("masks")
    if masks is not None:  # conversations (data/conversations.py): a uint8 loss mask per token
        if not isinstance(masks, dict) or not all(isinstance(masks.get(split), list) for split in SPLITS):
            return "'masks' is not {train: [...], val: [...]}"
        for split in SPLITS:
            if not all(
                isinstance(m, dict) and _plain_name(m.get("file")) and _is_count(m.get("tokens")) for m in masks[split]
            ):
                return f"a '{split}' mask shard has no plain file name or count"
            if sum(m["tokens"] for m in masks[split]) != meta["tokens"][split]:
                return f"the '{split}' mask shards do not cover its {meta['tokens'][split]} tokens"
    return None


def _plain_name(file: Any) -> bool:
    return isinstance(file, str) and bool(file) and Path(file).name == file and not file.startswith(".")


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a prepared directory after checking its structure and that every shard it lists is whole."""
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise DataError(f"{path}: no meta.json; not a prepared data directory, or a damaged one: prepare again")
    try:
        meta = json.loads(meta_file.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise DataError(f"{meta_file}: cannot read it ({os_reason(exc)}); check it or prepare again") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{meta_file}: not valid JSON; delete {path} and prepare again") from None
    problem = meta_problem(meta)
    if problem is not None:
        raise DataError(f"{meta_file}: {problem}; delete {path} and prepare again")
    dtype = np.dtype(meta["dtype"])
    vocab = meta["tokenizer"]["vocab_size"]
    if vocab > 1 << 32 or dtype.itemsize < token_dtype(vocab).itemsize:
        raise DataError(
            f"{path}: tokens stored as {dtype.name} cannot hold a vocab of {vocab}; delete it and prepare again"
        )
    for split in SPLITS:
        masks = [(m, 1) for m in meta.get("masks", {}).get(split, [])]
        for shard, itemsize in [(s, dtype.itemsize) for s in meta["shards"][split]] + masks:
            file = path / shard["file"]
            expected = shard["tokens"] * itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise DataError(f"{file}: missing or not {expected} bytes; delete {path} and prepare again")
    return meta


def check_tokenizer_dir(path: Path) -> None:
    """The tokenizer copy of a prepared directory is there and readable (it goes into every checkpoint); a
    cheap parse instead of a full load, which is slow for a large vocabulary."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        file = path / "tokenizer" / name
        try:
            whole = isinstance(json.loads(file.read_bytes().decode("utf-8")), dict)
        except (OSError, ValueError):  # missing, unreadable, not UTF-8 or not JSON
            whole = False
        if not whole:
            raise DataError(f"{file}: missing or damaged; delete {path} and prepare again")


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
        check_tokenizer_dir(path)
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

    @property
    def conversations(self) -> bool:
        """Chat / completions rows with a loss mask (data/conversations.py), not plain text."""
        return "masks" in self.meta

    def masks(self, split: str = "train") -> np.ndarray | ConcatTokens:
        """The uint8 loss mask of a conversation split, one per token (data.loader.TRAIN / STARTS bits)."""
        return open_split(self.path, self.meta["masks"][split], np.dtype(np.uint8))

    def token_bytes(self, vocab_size: int) -> np.ndarray:
        """UTF-8 bytes per token id, bits per byte's denominator (data.token_bytes)."""
        return token_bytes(self.tokenizer, vocab_size)

    def prompt_ids(self, text: str) -> list[int]:
        """What the trainers' samples start from: `text` as a user turn for conversations, else as is."""
        if not self.conversations:
            return self.tokenizer.encode(text)
        from tinyllama.data.chat import prompt_ids

        return prompt_ids(self.tokenizer, [{"role": "user", "content": text}])

    def check_model_vocab(self, model_vocab_size: int) -> None:
        check_model_vocab(model_vocab_size, self.vocab_size, self.meta["tokenizer"]["spec"])

    def signature(self) -> dict[str, Any]:
        """What identifies the tokens a run trains on, wherever they were prepared: the tokenizer, the split
        sizes and a hash of 4096 train tokens spread over the split. A resumed run must see the same."""
        train = self.tokens("train")
        positions = np.linspace(0, len(train) - 1, min(4096, len(train))).astype(np.int64)
        sample = [int(train[int(i)]) for i in positions]
        return {
            "tokenizer": self.tokenizer.fingerprint(),
            "tokens": {split: len(self.tokens(split)) for split in SPLITS},
            "sample": stable_hash(sample),
            "dataset": self.meta["source"]["spec"],
            **({"rows": self.meta.get("rows")} if self.conversations else {}),
        }

    def train_batches(
        self, seq_len: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1
    ) -> BatchLoader:
        """The deterministic batches of the train split (data.loader.BatchLoader; PackedLoader for conversations)."""
        if self.conversations:
            train, masks = self.tokens("train"), self.masks("train")
            eos = self.tokenizer.eos_id
            return PackedLoader(train, masks, seq_len, batch_size, seed, rank, world_size, grad_accum, eos)
        return BatchLoader(self.tokens("train"), seq_len, batch_size, seed, rank, world_size, grad_accum)

    def val_windows(self, seq_len: int, count: int) -> np.ndarray | Rows:
        """The validation set: `count` windows spread over the val split (data.loader.val_windows), or packed
        rows of conversations (data.loader.val_rows)."""
        if self.conversations:
            return val_rows(self.tokens("val"), self.masks("val"), seq_len, count, self.tokenizer.eos_id)
        return val_windows(self.tokens("val"), seq_len, count)


def check_model_vocab(model_vocab_size: int, vocab_size: int, spec: str) -> None:
    """Fail before training when the model's embedding table is smaller than the tokenizer's vocab."""
    if model_vocab_size < vocab_size:
        raise DataError(
            f"model.vocab_size ({model_vocab_size}) is smaller than the tokenizer's vocab ({vocab_size}, {spec}); "
            f"set model.vocab_size to at least {vocab_size}"
        )


def find_prepared(data: dict[str, Any], fingerprint: str | None, tokens: dict[str, int] | None = None) -> Path | None:
    """The newest prepared directory in data.cache_dir made from this dataset/tokenizer/split (never builds).

    `data` is a run's data config as a dict (train_config.yaml); `fingerprint`, when given, must be the
    tokenizer's; `tokens`, when given (a checkpoint's data signature), the split sizes, so a run prepared by an
    earlier version (whose split counted tokens) is scored on its own val split. A prepared directory given as
    data.dataset is taken whatever its split.
    """
    given = Path(str(data.get("dataset", ""))).expanduser()
    metas = [given / "meta.json"] if (given / "meta.json").is_file() else []
    metas = metas or sorted(Path(str(data.get("cache_dir", "data_cache"))).expanduser().glob("prepared/*/meta.json"))
    found = []
    for file in metas:
        try:
            meta = json.loads(file.read_text(encoding="utf-8"))
            made = (meta["source"]["spec"], meta["source"]["max_documents"], meta["tokenizer"]["spec"])
            same = file.parent == given or (*made, meta["val_fraction"]) == tuple(data.get(k) for k in MATCH_KEYS)
            same = same and (tokens is None or file.parent == given or meta["tokens"] == tokens)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if same and (fingerprint is None or meta["tokenizer"]["fingerprint"] == fingerprint):
            found.append(file.parent)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
