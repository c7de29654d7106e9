"""Documents -> token ids, in parallel, appended to the train/val shard writers in document order.

Two encoders, the same ids: the `tokenizers` tokenizer's `encode_batch` (Rust threads), and for the
GPT-2 a `tiktoken` Encoding built offline (data/fast_gpt2.py), several times faster per core, run in a thread
pool (tiktoken releases the GIL while it encodes; why not processes: `tiktoken_encode`). Both hand back
flat arrays, so Python never touches single ids.

Long documents are cut into ~256K-character pieces at whitespace (no EOS between pieces) so one huge
document still spreads over all cores; the cut is where the pre-tokenizer would split anyway, so the
ids equal whole-document encoding.

The stream can be checkpointed after any batch that ends on a document boundary: what the resume
needs then is only how many documents were read and the val split's two counters (data/shards.py).

The split counts a document's UTF-8 bytes, not its tokens, so it sends the same documents to val whatever
the tokenizer: bits per byte of two tokenizers compare on the same text, and a BPE trained on the corpus
learns from the train documents only (`train_documents`), never from the text it is scored on.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from tinyllama.data.shards import ShardWriter
from tinyllama.data.tokenizer import Tokenizer

CHUNK_CHARS = 1 << 18
BATCH_CHARS = 1 << 22  # ~4 MB of text per batch: enough to keep every core busy, small enough to bound RAM
BATCH_PIECES = 8192
# The cut goes right before the last whitespace character of a run that precedes a non-space:
# GPT-2-style pre-tokenizers put a token boundary there, so the ids equal whole-document encoding.
_LAST_CUT = re.compile(r".*\s(?=\S)", re.S)
# (flat ids, ids per piece) of a list of texts; no EOS added
BatchEncode = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


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


def text_bytes(text: str) -> int:
    """UTF-8 length of `text` (lone surrogates from data.encoding_errors count as their 3-byte form)."""
    return len(text.encode("utf-8", "surrogatepass"))


def train_documents(docs: Iterable[str], fraction: float) -> Iterator[str]:
    """The documents prepare sends to train, in order (the split is by bytes, so it is known before any
    tokenizer exists): what a BPE trained on the corpus learns from. A corpus with no document in val (one
    file) takes val from its tail after encoding; its tokenizer sees all of it."""
    split = ValSplit(fraction)
    for doc in docs:
        if doc and not split.is_val(text_bytes(doc)):
            yield doc


class ValSplit:
    """Sends whole documents to val so the val share of the corpus stays as close as possible to `fraction`.

    Sizes are UTF-8 bytes for text corpora (Encoder) and tokens for conversations (data/conversations.py).

    Deterministic and single-pass (works on streams of unknown length): a document goes to val when
    that leaves |val - fraction * total| smaller than sending it to train would. Its state is two
    counters, saved with each checkpoint so a resumed prepare splits exactly as an uninterrupted one.
    """

    def __init__(self, fraction: float, total: int = 0, val: int = 0) -> None:
        self.fraction, self.total, self.val = fraction, total, val

    def is_val(self, size: int) -> bool:
        self.total += size
        to_val = self.val + size / 2 < self.fraction * self.total
        self.val += size if to_val else 0
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


def cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    with contextlib.suppress(AttributeError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def tokenizers_encode(tokenizer: Tokenizer, dtype: np.dtype) -> BatchEncode:
    """`tokenizers`' encode_batch (Rust threads), flattened straight into `dtype`."""

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = tokenizer.encode_batch(texts)
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        return np.fromiter(itertools.chain.from_iterable(ids), dtype, int(lengths.sum())), lengths

    return encode


def tiktoken_group(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint32 ids, ids per text) of some texts with the tiktoken GPT-2 (one thread's share of a batch)."""
    from tinyllama.data.fast_gpt2 import tiktoken_gpt2

    encoding = tiktoken_gpt2()
    arrays = [encoding.encode_to_numpy(text, allowed_special="all") for text in texts]
    lengths = np.fromiter(map(len, arrays), np.int64, len(arrays))
    return (np.concatenate(arrays) if arrays else np.empty(0, np.uint32)), lengths


def tiktoken_encode(dtype: np.dtype, pool: ThreadPoolExecutor, workers: int) -> BatchEncode:
    """tiktoken over `workers` threads, each encoding contiguous groups of the texts to numpy buffers.

    Threads, not processes: tiktoken releases the GIL while it encodes. Worker processes encoded ~25%
    faster on 2 cores (docs/data.md), but fork can deadlock a process that runs Rust thread pools and
    spawn re-runs the caller's main script in every worker, so they are not used."""

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        size = max(1, -(-len(texts) // (workers * 4)))  # a few groups per thread: an uneven group waits less
        parts = list(pool.map(tiktoken_group, [texts[i : i + size] for i in range(0, len(texts), size)]))
        flat = np.concatenate([p[0] for p in parts]).astype(dtype, copy=False)
        return flat, np.concatenate([p[1] for p in parts])

    return encode


@contextlib.contextmanager
def batch_encoder(
    tokenizer: Tokenizer, dtype: np.dtype, workers: int, fast: bool = True
) -> Iterator[tuple[str, BatchEncode]]:
    """(name, encode): the fastest encoder that gives `tokenizer`'s exact ids, tiktoken for GPT-2 (unless
    `fast` is off: data.fast_gpt2), else tokenizers. `workers`: data.num_workers (0 = every core)."""
    from tinyllama.data.fast_gpt2 import is_gpt2, tiktoken_gpt2

    workers = workers or cores()
    encoding = tiktoken_gpt2() if fast and is_gpt2(tokenizer) else None
    if encoding is None:
        with parallelism(workers):
            yield "tokenizers", tokenizers_encode(tokenizer, dtype)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="tiktoken") as pool:
        yield "tiktoken", tiktoken_encode(dtype, pool, workers)


class Encoder:
    """Feeds documents through `encode` in batches and appends them to the train/val writers.

    Batch k+1 is encoded in a helper thread (both encoders release the GIL) while this thread reads
    documents and writes batch k, so the encoder never waits on Python between batches. After a batch
    that ends a document, `checkpoint(documents_read)` is called: everything before that point is on
    disk, nothing after it is.
    """

    def __init__(
        self,
        encode: BatchEncode,
        eos_id: int,
        writers: dict[str, ShardWriter],
        split: ValSplit,
        documents: dict[str, int],
        bar: Any,
        checkpoint: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.encode, self.eos_id, self.writers, self.bar = encode, eos_id, writers, bar
        self.split, self.documents, self.checkpoint = split, documents, checkpoint
        self.read = 0  # documents taken from the stream so far (empty ones too)
        self.texts: list[str] = []
        self.ends: list[bool] = []  # does piece i end its document?
        self.sizes: list[int] = []  # UTF-8 bytes of piece i (what the split counts)
        self.chars = 0
        self.carry: list[np.ndarray] = []  # tokens of a document whose last piece is in a later batch
        self.carry_bytes = 0  # and its bytes so far
        self.pool: ThreadPoolExecutor | None = None
        self.in_flight: tuple[Future[tuple[np.ndarray, np.ndarray]], list[bool], list[int], int] | None = None

    def add(self, doc: str) -> None:
        parts = list(pieces(doc))
        for i, part in enumerate(parts):
            self.texts.append(part)
            self.ends.append(i == len(parts) - 1)
            self.sizes.append(text_bytes(part))
            self.chars += len(part)
            if self.chars >= BATCH_CHARS or len(self.texts) >= BATCH_PIECES:
                self.flush()

    def add_all(self, docs: Iterable[str], read: int = 0) -> None:
        """Encode and write every document of `docs`; `read`: how many the stream had before it (a resume)."""
        self.read = read
        with ThreadPoolExecutor(1, thread_name_prefix="encode") as self.pool:
            for doc in docs:
                self.read += 1
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
            started = (self.pool.submit(self.encode, self.texts), self.ends, self.sizes, self.read)
            self.texts, self.ends, self.sizes, self.chars = [], [], [], 0
        if self.in_flight is not None:
            future, ends, sizes, read = self.in_flight
            self._write(*future.result(), ends, sizes)
            if ends[-1]:
                self.checkpoint(read)
        self.in_flight = started

    def _write(self, flat: np.ndarray, lengths: np.ndarray, ends: list[bool], sizes: list[int]) -> None:
        ended = np.flatnonzero(np.asarray(ends))
        flat = np.insert(flat, np.cumsum(lengths)[ended], self.eos_id)  # EOS after each document's last piece
        lengths = lengths.copy()
        lengths[ended] += 1
        labels = self._labels(ends, sizes)
        per_token = np.repeat(labels, lengths)
        for code, split in enumerate(("train", "val")):
            self.writers[split].write(flat[per_token == code])
        if labels[-1] == 2:
            self.carry.append(flat[per_token == 2])
        self.bar.update(int(flat.size))

    def _labels(self, ends: list[bool], sizes: list[int]) -> np.ndarray:
        """Per piece: 0 train, 1 val, 2 held back (its document continues in the next batch)."""
        labels = np.full(len(ends), 2, np.int8)
        first, doc_bytes = 0, self.carry_bytes
        for i, end in enumerate(ends):
            doc_bytes += sizes[i]
            if not end:
                continue
            code = int(self.split.is_val(doc_bytes))
            labels[first : i + 1] = code
            self.documents["val" if code else "train"] += 1
            if self.carry:  # the first document of this batch began earlier: its head goes first
                self.writers["val" if code else "train"].write(np.concatenate(self.carry))
                self.carry = []
            first, doc_bytes = i + 1, 0
        self.carry_bytes = doc_bytes
        return labels
