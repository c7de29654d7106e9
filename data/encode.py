"""Documents -> token shards: parallel batched encoding, EOS joins, the train/val split.

Encoding runs in `tokenizers`' Rust thread pool (encode_batch), one large batch at a time, so
Python only flattens ids and writes them. Long documents are cut into ~256K-character pieces at
whitespace (no EOS between pieces) so one huge file still spreads over all cores.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain
from typing import Any

import numpy as np

from data.shards import ShardWriter
from data.tokenizer import Tokenizer

CHUNK_CHARS = 1 << 18
BATCH_CHARS = 1 << 22  # ~4 MB of text per encode_batch call: enough to keep every core busy
BATCH_PIECES = 8192
# The cut goes right before the last whitespace character of a run that precedes a non-space:
# GPT-2-style pre-tokenizers put a token boundary there, so the ids equal whole-document encoding.
_LAST_CUT = re.compile(r".*\s(?=\S)", re.S)


def pieces(doc: str, chunk: int | None = None) -> Iterator[str]:
    """`doc` in order, in pieces of at most `chunk` (default CHUNK_CHARS) characters.

    A stretch of `chunk // 2` characters with no whitespace is cut hard (still lossless on decode).
    """
    chunk = chunk or CHUNK_CHARS
    start = 0
    while len(doc) - start > chunk:
        match = _LAST_CUT.match(doc, start + chunk // 2, start + chunk)
        cut = match.end() - 1 if match else start + chunk
        yield doc[start:cut]
        start = cut
    yield doc[start:]


class ValSplit:
    """Sends whole documents to val so the val share of tokens stays as close as possible to `fraction`.

    Deterministic and single-pass (works on streams of unknown length): a document goes to val when
    that leaves |val - fraction * total| smaller than sending it to train would.
    """

    def __init__(self, fraction: float) -> None:
        self.fraction, self.total, self.val = fraction, 0, 0

    def is_val(self, n_tokens: int) -> bool:
        self.total += n_tokens
        to_val = self.val + n_tokens / 2 < self.fraction * self.total
        self.val += n_tokens if to_val else 0
        return to_val


@contextlib.contextmanager
def parallelism(workers: int) -> Iterator[None]:
    """Let tokenizers use its thread pool here even if TOKENIZERS_PARALLELISM=false was set for forks.

    `workers` (data.num_workers; 0 = all cores) sizes the pool only if it has not started yet.
    """
    saved = {key: os.environ.get(key) for key in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if workers == 1 else "true"
    if workers > 1 and saved["RAYON_NUM_THREADS"] is None:
        os.environ["RAYON_NUM_THREADS"] = str(workers)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Encoder:
    """Feeds documents through the tokenizer in batches and appends them to the train/val writers.

    Batch k+1 is encoded in a helper thread (tokenizers releases the GIL) while this thread reads
    documents and writes batch k, so the Rust pool never waits on Python between batches.
    """

    def __init__(self, tokenizer: Tokenizer, writers: dict[str, ShardWriter], val_fraction: float, bar: Any) -> None:
        self.tokenizer, self.writers, self.bar = tokenizer, writers, bar
        self.dtype = writers["train"].dtype
        self.split = ValSplit(val_fraction)
        self.documents = {"train": 0, "val": 0}
        self.texts: list[str] = []
        self.ends: list[bool] = []  # does piece i end its document?
        self.chars = 0
        self.carry: list[np.ndarray] = []  # tokens of a document whose last piece is in a later batch
        self.pool: ThreadPoolExecutor | None = None
        self.in_flight: tuple[Future[list[list[int]]], list[bool]] | None = None

    def add(self, doc: str) -> None:
        parts = list(pieces(doc))
        for i, part in enumerate(parts):
            self.texts.append(part)
            self.ends.append(i == len(parts) - 1)
            self.chars += len(part)
            if self.chars >= BATCH_CHARS or len(self.texts) >= BATCH_PIECES:
                self.flush()

    def add_all(self, docs: Iterable[str]) -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="encode") as self.pool:
            for doc in docs:
                if doc:
                    self.add(doc)
            self.flush()
            self.flush()  # the second call writes the last batch in flight

    def flush(self) -> None:
        """Start encoding the collected pieces, then write the batch that was in flight before them."""
        started = None
        if self.texts:
            if self.pool is None:
                raise RuntimeError("Encoder.flush outside add_all")
            started = (self.pool.submit(self.tokenizer.encode_batch, self.texts), self.ends)
            self.texts, self.ends, self.chars = [], [], 0
        if self.in_flight is not None:
            self._write(self.in_flight[0].result(), self.in_flight[1])
        self.in_flight = started

    def _write(self, ids: list[list[int]], ends: list[bool]) -> None:
        for piece_ids, end in zip(ids, ends, strict=True):
            if end:
                piece_ids.append(self.tokenizer.eos_id)
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter(chain.from_iterable(ids), self.dtype, int(lengths.sum()))
        labels = self._labels(lengths, ends)
        per_token = np.repeat(labels, lengths)
        for code, split in enumerate(("train", "val")):
            self.writers[split].write(flat[per_token == code])
        if labels[-1] == 2:
            self.carry.append(flat[per_token == 2])
        self.bar.update(int(flat.size))

    def _labels(self, lengths: np.ndarray, ends: list[bool]) -> np.ndarray:
        """Per piece: 0 train, 1 val, 2 held back (its document continues in the next batch)."""
        labels = np.full(len(lengths), 2, np.int8)
        first, doc_tokens = 0, sum(len(c) for c in self.carry)
        for i, end in enumerate(ends):
            doc_tokens += int(lengths[i])
            if not end:
                continue
            code = int(self.split.is_val(doc_tokens))
            labels[first : i + 1] = code
            self.documents["val" if code else "train"] += 1
            if self.carry:  # the first document of this batch began earlier: its head goes first
                self.writers["val" if code else "train"].write(np.concatenate(self.carry))
                self.carry = []
            first, doc_tokens = i + 1, 0
        return labels
