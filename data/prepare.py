"""Turn data.dataset + data.tokenizer into cached token shards the trainers read.

    python -m data.prepare --config config.yaml [--data.dataset corpus/*.txt --data.tokenizer bpe:4096]

`prepare_data(cfg.data)` is what the trainers call: it returns at once when a prepared directory
for the same source, tokenizer and split already exists under data.cache_dir, and otherwise builds
one beside it (`.<name>.partial`) that is renamed into place only when complete.

The build goes shard by shard (data/shards.py): a prepare that is killed (SIGKILL, a lost machine,
Ctrl-C) resumes at its next missing shard on the next call with the same inputs, without tokenizing
the finished shards again, and yields the same bytes as an uninterrupted one. Memory stays bounded by
a few batches of text whatever the corpus size: documents are streamed, tokens go straight to disk.

Failures other than an interruption leave nothing behind: a full or read-only cache is one DataError line
naming data.cache_dir, the partial directory is removed, finished directories (earlier preparations) are
never touched, and what a killed atomic write left is swept up by the next prepare that takes its lock.

Encoding: data/encode.py (tiktoken for the packaged GPT-2, else `tokenizers`' encode_batch; both on
every core).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tinyllama.core.cli import ArgumentParser, UserError, module_prog, progress, run_cli
from tinyllama.core.config import DataConfig, load_config, parse_overrides
from tinyllama.core.config_help import override_help
from tinyllama.core.fs import MARKS, OLD_MARK, atomic_path, file_lock, fsync_dir, remove, write_json
from tinyllama.data import conversations
from tinyllama.data.ahead import AheadData
from tinyllama.data.chat import detect_format, template_of
from tinyllama.data.conversations import builtin_chat_source, configured_template
from tinyllama.data.encode import Encoder, ValSplit, batch_encoder, train_documents
from tinyllama.data.shards import PROGRESS, SPLITS, Progress, ShardWriter, resume_progress
from tinyllama.data.sources import BUILTIN_TEXTS, OPENERS, RECORD, TEXT_SUFFIXES, Source, resolve_source
from tinyllama.data.store import FORMAT, SPLIT_RULE, PreparedData, read_meta, token_dtype
from tinyllama.data.tokenizer import Tokenizer, load_tokenizer
from tinyllama.data.util import DataError, cache_error, stable_hash

PARTIAL = ".partial"


def _limited(source: Source, max_documents: int) -> Iterator[str]:
    docs = source.documents()
    return itertools.islice(docs, max_documents) if max_documents else docs


def _progress(enabled: bool, desc: str) -> Any:
    return progress(shown=enabled, desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True)  # then a summary


def _meta(source: Source, tokenizer: Tokenizer, cfg: DataConfig, progress: Progress, extra: dict[str, Any]) -> dict:
    return {
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
        "dtype": progress.dtype,
        "val_fraction": cfg.val_fraction,
        "shard_tokens": progress.shard_tokens,
        **extra,
        "documents": progress.documents,
        "shards": progress.shards,
    }


def _build(work: Path, source: Source, tokenizer: Tokenizer, cfg: DataConfig, key: str, show: bool, log: Any) -> None:
    """Tokenize into `work` shard by shard, resuming a killed build of the same inputs; on return `work` holds
    a finished prepared directory (meta.json written, progress.json gone)."""
    dtype = token_dtype(tokenizer.vocab_size)
    existed = work.exists()
    progress = resume_progress(work, key, cfg.shard_tokens, dtype)
    if progress is None:
        if existed:
            log(f"data: starting over: {work} had no usable progress.json (or another data.shard_tokens)")
        work.mkdir(parents=True)
        progress = Progress(key, cfg.shard_tokens, dtype.name)
    elif progress.documents_read:
        done = sum(x["tokens"] == cfg.shard_tokens for s in SPLITS for x in progress.shards[s])
        log(f"data: resuming after {progress.documents_read:,} documents ({done} finished shards) in {work}")
    writers = {s: ShardWriter(work, s, dtype, cfg.shard_tokens, progress.shards[s]) for s in SPLITS}
    split = ValSplit(cfg.val_fraction, *progress.val_split)
    finished = sum(w.finished for w in writers.values())

    def checkpoint(read: int) -> None:
        nonlocal finished
        now = sum(w.finished for w in writers.values())
        if now == finished:
            return
        for writer in writers.values():
            writer.sync()
        fsync_dir(work)
        progress.documents_read, progress.val_split = read, (split.total, split.val)
        progress.shards = {s: [dict(x) for x in w.shards] for s, w in writers.items()}
        progress.save(work)
        finished = now

    start = time.perf_counter()
    resumed_tokens = sum(w.tokens for w in writers.values())
    try:
        encoding = batch_encoder(tokenizer, dtype, cfg.num_workers, cfg.fast_gpt2)
        with _progress(show, "tokenizing") as bar, encoding as (encoder_name, enc):
            bar.update(resumed_tokens)
            encoder = Encoder(enc, tokenizer.eos_id, writers, split, progress.documents, bar, checkpoint)
            docs = itertools.islice(_limited(source, cfg.max_documents), progress.documents_read, None)
            try:
                encoder.add_all(docs, progress.documents_read)
            except BaseException:
                bar.leave = False  # cleared on close: the error line stands alone
                raise
        if writers["train"].tokens + writers["val"].tokens == 0:
            raise DataError(
                f"the corpus is empty: {source.description} has no text; check data.dataset / data.text_field"
            )
        for writer in writers.values():
            writer.close_file()
        val_from_tail = writers["val"].tokens == 0
        if val_from_tail:  # no document could go to val (e.g. a single file): take the end of the stream
            tail = writers["train"].take_tail(max(1, round(cfg.val_fraction * writers["train"].tokens)))
            writers["val"].write(tail)
            writers["val"].close_file()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    tokenizer.save(work / "tokenizer")
    seconds = time.perf_counter() - start
    new_tokens = sum(w.tokens for w in writers.values()) - resumed_tokens
    progress.shards = {s: w.shards for s, w in writers.items()}
    extra = {
        "split": SPLIT_RULE,
        "val_from_tail": val_from_tail,
        "tokens": {s: writers[s].tokens for s in SPLITS},
        "seconds": round(seconds, 3),
        "tokens_per_second": round(new_tokens / seconds) if seconds > 0 else None,
        "resumed_tokens": resumed_tokens,
        "encoder": encoder_name,
    }
    write_json(work / "meta.json", _meta(source, tokenizer, cfg, progress, extra))
    remove(work / PROGRESS)


def _build_conversations(work: Path, source: Source, tokenizer: Tokenizer, cfg: DataConfig, fmt: str, key: str) -> None:
    """data/conversations.py into `work`, from scratch (a killed one starts over), then meta.json."""
    if work.exists():
        remove(work)
    work.mkdir(parents=True)
    start = time.perf_counter()
    extra = conversations.build(work, _limited(source, cfg.max_documents), source.spec, tokenizer, cfg, fmt)
    tokenizer.save(work / "tokenizer")
    progress = Progress(key, cfg.shard_tokens, token_dtype(tokenizer.vocab_size).name)
    progress.documents, progress.shards = extra.pop("documents"), extra.pop("shards")
    extra["seconds"] = round(time.perf_counter() - start, 3)
    write_json(work / "meta.json", _meta(source, tokenizer, cfg, progress, extra))


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
    data_cfg: DataConfig, progress: bool = True, shard_tokens: int | None = None, log: Any = print, launch: bool = True
) -> PreparedData | AheadData:
    """Prepared tokens for this data config: reused from data.cache_dir when its inputs are unchanged.

    `shard_tokens` overrides data.shard_tokens (tests use tiny shards). With data.prepare: ahead, returns at
    once: the trainer reads shards as a background prepare (started here when `launch`) writes them
    (data/ahead.py)."""
    if shard_tokens is not None:
        data_cfg = dataclasses.replace(data_cfg, shard_tokens=shard_tokens)
    if data_cfg.shard_tokens < 1:
        raise DataError(f"data.shard_tokens must be at least 1, got {data_cfg.shard_tokens}; e.g. 100000000")
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
    fmt, source = _resolve(data_cfg, cache)
    with _cache_errors(cache):
        if data_cfg.prepare == "ahead":
            if fmt != "text":
                raise DataError(
                    "data.prepare ahead streams text corpora; conversations are prepared whole: data.prepare full"
                )
            tokenizer, key, target = _plan(source, cache, data_cfg, fmt)
            work = target.with_name(f".{target.name}{PARTIAL}")
            return AheadData(data_cfg, tokenizer, target, work, key, launch)
        return _prepare(source, cache, data_cfg, progress, log, fmt)


def _resolve(cfg: DataConfig, cache: Path) -> tuple[str, Source]:
    """(format, source): data.format, or under auto what the first record holds (text files and the
    built-in corpus are text without a look; builtin-chat is chat)."""
    args = (str(cache), cfg.max_documents, cfg.dataset_config, cfg.split, cfg.streaming, cfg.encoding_errors)
    if cfg.dataset == "builtin-chat":
        if cfg.format not in ("auto", "chat"):
            raise DataError(
                f"data.dataset builtin-chat holds conversations; set data.format chat or auto, not {cfg.format}"
            )
        return "chat", builtin_chat_source(str(cache), cfg.max_documents)
    suffix = next((x for x in reversed(Path(cfg.dataset).suffixes) if x.lower() not in OPENERS), "").lower()
    plain = cfg.dataset in BUILTIN_TEXTS or suffix in TEXT_SUFFIXES
    if cfg.format == "text" or (cfg.format == "auto" and plain):
        return "text", resolve_source(cfg.dataset, cfg.text_field, *args)
    records = resolve_source(cfg.dataset, RECORD, *args)
    fmt = cfg.format
    if fmt == "auto":
        first = next(iter(records.documents()), None)
        try:
            fmt = detect_format(json.loads(first)) if first is not None else "text"
        except ValueError:
            fmt = "text"
    return (fmt, records) if fmt != "text" else ("text", resolve_source(cfg.dataset, cfg.text_field, *args))


def _plan(source: Source, cache: Path, data_cfg: DataConfig, fmt: str) -> tuple[Tokenizer, str, Path]:
    """(tokenizer, cache key, prepared directory) for these inputs; builds nothing but a bpe tokenizer."""
    docs = _limited(source, data_cfg.max_documents)
    if fmt == "text":  # a trained BPE learns from the train documents only: the val split stays unseen text
        docs = train_documents(docs, data_cfg.val_fraction)
        corpus_key = stable_hash([source.fingerprint, data_cfg.max_documents, SPLIT_RULE, data_cfg.val_fraction])
    else:
        corpus_key = stable_hash([source.fingerprint, data_cfg.max_documents])
    tokenizer = load_tokenizer(data_cfg.tokenizer, docs, cache / "tokenizers", corpus_key, source.description)
    inputs = {
        "format": FORMAT,
        "source": source.fingerprint,
        "max_documents": data_cfg.max_documents,
        "tokenizer": tokenizer.fingerprint(),
        "val_fraction": data_cfg.val_fraction,
    }
    if fmt == "text":
        inputs["split"] = SPLIT_RULE
    else:  # conversations: how they are rendered and masked decides the tokens too
        template = template_of(tokenizer, configured_template(data_cfg.chat_template))
        inputs["rows"] = [fmt, data_cfg.mask_prompt, template.text]
        tokenizer.chat_template = template.text  # PreparedData.open below may reuse this tokenizer
        tokenizer.chat_template_source = template.source
    key = stable_hash(inputs)
    return tokenizer, key, cache / "prepared" / f"{_slug(data_cfg.dataset)}-{key}"


def _prepare(
    source: Source, cache: Path, data_cfg: DataConfig, progress: bool, log: Any, fmt: str = "text"
) -> PreparedData:
    tokenizer, key, target = _plan(source, cache, data_cfg, fmt)
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
        work = target.with_name(f".{target.name}{PARTIAL}")
        try:
            if fmt == "text":
                _build(work, source, tokenizer, data_cfg, key, progress, log)
            else:
                _build_conversations(work, source, tokenizer, data_cfg, fmt, key)
            with atomic_path(target) as tmp:
                work.rename(tmp)
        except KeyboardInterrupt:
            raise  # an interruption: the next prepare resumes from `work`
        except BaseException:
            with contextlib.suppress(OSError):
                remove(work)  # a failure (bad input, full disk): nothing half-made stays in the cache
            raise
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
