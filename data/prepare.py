"""Turn data.dataset + data.tokenizer into cached token shards the trainers read.

    python -m data.prepare --config config.yaml [--data.dataset corpus/*.txt --data.tokenizer bpe:4096]

`prepare_data(cfg.data)` is what the trainers call: it returns at once when a prepared directory
for the same source, tokenizer and split already exists under data.cache_dir, and otherwise builds
one in a temp directory that is renamed into place only when complete.

Failures leave nothing behind: a full or read-only cache is one DataError line naming data.cache_dir, the
temp directory is removed, finished directories (earlier preparations) are never touched, and what a
killed prepare left is swept up by the next one that takes its lock.

Encoding runs in `tokenizers`' Rust thread pool (encode_batch), one large batch at a time, so
Python only flattens ids and writes them. Long documents are cut into ~256K-character pieces at
whitespace (no EOS between pieces) so one huge file still spreads over all cores.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tinyllama.core.cli import ArgumentParser, UserError, module_prog, run_cli
from tinyllama.core.config import DataConfig, load_config, parse_overrides
from tinyllama.core.config_help import override_help
from tinyllama.core.fs import MARKS, OLD_MARK, atomic_path, file_lock, remove, write_json
from tinyllama.data.sources import Source, resolve_source
from tinyllama.data.store import FORMAT, SHARD_TOKENS, SPLITS, PreparedData, ShardWriter, read_meta, token_dtype
from tinyllama.data.tokenizer import Tokenizer, load_tokenizer
from tinyllama.data.util import DataError, cache_error, stable_hash

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
        flat = np.fromiter(itertools.chain.from_iterable(ids), self.dtype, int(lengths.sum()))
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


def _limited(source: Source, max_documents: int) -> Iterator[str]:
    docs = source.documents()
    return itertools.islice(docs, max_documents) if max_documents else docs


def _progress(enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    shown = enabled and sys.stderr.isatty()  # piped (CI, `| tee`): no redraws; the summary line follows
    return tqdm(desc=desc, unit="tok", unit_scale=True, disable=not shown, file=sys.stderr, dynamic_ncols=True)


def _build(
    directory: Path, source: Source, tokenizer: Tokenizer, cfg: DataConfig, progress: bool, shard_tokens: int
) -> None:
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {split: ShardWriter(directory, split, dtype, shard_tokens) for split in SPLITS}
    start = time.perf_counter()
    try:
        with _progress(progress, "tokenizing") as bar, parallelism(cfg.num_workers):
            encoder = Encoder(tokenizer, writers, cfg.val_fraction, bar)
            try:
                encoder.add_all(_limited(source, cfg.max_documents))
            except BaseException:
                bar.leave = False  # cleared on close: the error line stands alone
                raise
        if writers["train"].tokens + writers["val"].tokens == 0:
            raise DataError(
                f"the corpus is empty: {source.description} has no text; check data.dataset / data.text_field"
            )
        val_from_tail = writers["val"].tokens == 0
        if val_from_tail:  # no document could go to val (e.g. a single file): take the end of the stream
            tail = writers["train"].take_tail(max(1, round(cfg.val_fraction * writers["train"].tokens)))
            writers["val"].write(tail)
        for writer in writers.values():
            writer.close_file()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    tokenizer.save(directory / "tokenizer")
    seconds = time.perf_counter() - start
    total = sum(w.tokens for w in writers.values())
    write_json(
        directory / "meta.json",
        {
            "format": FORMAT,
            "source": {
                "spec": source.spec,
                "kind": source.kind,
                "description": source.description,
                "fingerprint": source.fingerprint,
                "text_field": cfg.text_field,
                "max_documents": cfg.max_documents,
            },
            "tokenizer": {
                "spec": cfg.tokenizer,
                "name": tokenizer.name,
                "fingerprint": tokenizer.fingerprint(),
                "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id,
                "bos_id": tokenizer.bos_id,
            },
            "dtype": dtype.name,
            "val_fraction": cfg.val_fraction,
            "val_from_tail": val_from_tail,
            "tokens": {split: writers[split].tokens for split in SPLITS},
            "documents": encoder.documents,
            "shards": {split: writers[split].shards for split in SPLITS},
            "seconds": round(seconds, 3),
            "tokens_per_second": round(total / seconds) if seconds > 0 else None,
        },
    )


def _slug(spec: str) -> str:
    """A readable cache directory prefix: `corpus/*.txt` -> corpus, `org/name` -> name."""
    parts = list(itertools.takewhile(lambda part: not glob.has_magic(part), Path(spec).parts))
    name = parts[-1] if parts else "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40] or "data"


def _check_tokenizer(path: Path, meta: dict[str, Any], spec: str) -> None:
    """A prepared directory given as data.dataset must have been made with the tokenizer asked for."""
    made = meta["tokenizer"]
    if spec == made["spec"]:
        return
    try:
        asked = load_tokenizer(spec)
    except DataError as exc:
        raise DataError(f"{path} was prepared with tokenizer '{made['spec']}', not '{spec}': {exc}") from None
    if asked.fingerprint() != made["fingerprint"]:
        raise DataError(
            f"tokenizer mismatch: {path} was prepared with '{made['spec']}' (vocab {made['vocab_size']}, "
            f"fingerprint {made['fingerprint']}) but data.tokenizer is '{spec}' (vocab {asked.vocab_size}, "
            f"fingerprint {asked.fingerprint()}); pass --data.tokenizer {made['spec']} or prepare again"
        )


def _debris_of(name: str) -> tuple[str, str]:
    """(final name, mark) of a core.fs temporary name (`.<final><mark><pid>`), or ("", "")."""
    if name.startswith("."):
        for mark in MARKS:
            base, found, pid = name[1:].rpartition(mark)
            if found and base and pid.isdigit():
                return base, mark
    return "", ""


def sweep(directory: Path, lock_of: Callable[[str], Path], held: str = "") -> None:
    """Remove what killed writers left in `directory` (`.<name>.tmp-<pid>` ...), each only under its target's
    lock (`held`: the one this process holds), so a live writer's, on this host or another, is never touched.
    Best effort: a read-only cache still serves what it holds."""
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        base, mark = _debris_of(path.name)
        if not base:
            continue
        with contextlib.suppress(OSError), contextlib.ExitStack() as stack:
            if base != held and not stack.enter_context(file_lock(lock_of(base), blocking=False)):
                continue  # its writer is still at work
            final = directory / base
            if mark == OLD_MARK and not (final.exists() or final.is_symlink()):
                path.rename(final)  # killed between atomic_path's two renames: the old version goes back
            else:
                remove(path)


@contextlib.contextmanager
def _cache_errors(cache: Path) -> Iterator[None]:
    """Any failed write under data.cache_dir (disk full, read-only, a file in the way) as one line naming it."""
    try:
        yield
    except OSError as exc:
        raise cache_error(cache, exc) from exc


def _prepared_lock(directory: Path) -> Callable[[str], Path]:
    return lambda name: directory / f".{name}.lock"


def _plain_lock(directory: Path) -> Callable[[str], Path]:
    return lambda name: directory / Path(name).with_suffix(".lock").name  # bpe tokenizers, built-in text


def prepare_data(
    data_cfg: DataConfig, progress: bool = True, shard_tokens: int = SHARD_TOKENS, log: Any = print
) -> PreparedData:
    """Prepared tokens for this data config: reused from data.cache_dir when its inputs are unchanged."""
    given = Path(data_cfg.dataset).expanduser()
    # a prepared directory, or one that lost its meta.json (read_meta says so) rather than a datasets directory
    if (given / "meta.json").exists() or ((given / "tokenizer").is_dir() and any(given.glob("train-*.bin"))):
        meta = read_meta(given)
        _check_tokenizer(given, meta, data_cfg.tokenizer)
        return PreparedData.open(given)
    cache = Path(data_cfg.cache_dir).expanduser()
    with _cache_errors(cache):
        cache.mkdir(parents=True, exist_ok=True)
        for sub in ("tokenizers", "builtin"):
            sweep(cache / sub, _plain_lock(cache / sub))
    source = resolve_source(
        data_cfg.dataset,
        data_cfg.text_field,
        str(cache),
        data_cfg.max_documents,
        data_cfg.dataset_config,
        data_cfg.split,
        data_cfg.streaming,
        data_cfg.encoding_errors,
    )
    with _cache_errors(cache):
        return _prepare(source, cache, data_cfg, progress, shard_tokens, log)


def _prepare(
    source: Source, cache: Path, data_cfg: DataConfig, progress: bool, shard_tokens: int, log: Any
) -> PreparedData:
    corpus_key = stable_hash([source.fingerprint, data_cfg.max_documents])
    docs = _limited(source, data_cfg.max_documents)
    tokenizer = load_tokenizer(data_cfg.tokenizer, docs, cache / "tokenizers", corpus_key, source.description)
    key = stable_hash(
        {
            "format": FORMAT,
            "source": source.fingerprint,
            "max_documents": data_cfg.max_documents,
            "tokenizer": tokenizer.fingerprint(),
            "val_fraction": data_cfg.val_fraction,
        }
    )
    target = cache / "prepared" / f"{_slug(data_cfg.dataset)}-{key}"
    if target.is_dir():  # finished directories are renamed into place whole: safe to read without the lock
        with contextlib.suppress(DataError):
            return PreparedData.open(target, tokenizer)
    lock = _prepared_lock(target.parent)
    with file_lock(lock(target.name)):  # one rank prepares, the others wait and reuse
        sweep(target.parent, lock, held=target.name)
        if target.is_dir():
            try:
                return PreparedData.open(target, tokenizer)
            except DataError as exc:
                log(f"data: rebuilding damaged cache {target} ({exc})")
        log(f"data: preparing {source.description} with tokenizer {data_cfg.tokenizer} -> {target}")
        with atomic_path(target) as tmp:
            tmp.mkdir()
            _build(tmp, source, tokenizer, data_cfg, progress, shard_tokens)
    return PreparedData.open(target, tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog=module_prog("data.prepare"),
        description="Tokenize data.dataset with data.tokenizer into cached uint16/uint32 token shards + meta.json "
        "(the trainers do this automatically; run it to prepare ahead of time or to inspect the result).",
        epilog=override_help(),
    )
    parser.add_argument("--config", help="YAML config file (default: only built-in defaults)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args, rest = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, parse_overrides(rest))
        start = time.perf_counter()
        prepared = prepare_data(config.data, progress=not args.quiet)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = prepared.meta
    print(f"prepared: {prepared.path}")
    print(f"source:   {meta['source']['description']}")
    tok = meta["tokenizer"]
    print(f"tokens:   train {meta['tokens']['train']:,} | val {meta['tokens']['val']:,} | {meta['dtype']}")
    print(f"tokenizer: {tok['spec']} (vocab {tok['vocab_size']}, eos id {tok['eos_id']}, hash {tok['fingerprint']})")
    print(f"time:     {time.perf_counter() - start:.1f}s")
    return 0


def cli() -> None:
    """The `tinyllama-prepare` command."""
    run_cli(lambda: sys.exit(main()))


if __name__ == "__main__":
    cli()
