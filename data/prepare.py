"""Turn data.dataset + data.tokenizer into cached token shards the trainers read.

    python -m data.prepare --config config.yaml [--data.dataset corpus/*.txt --data.tokenizer bpe:4096]

`prepare_data(cfg.data)` is what the trainers call: it returns at once when a prepared directory
for the same source, tokenizer and split already exists under data.cache_dir, and otherwise builds
one in a temp directory that is renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.config import ConfigError, DataConfig, load_config, override_help, parse_overrides
from data.encode import Encoder, parallelism
from data.errors import DataError
from data.fsutil import file_lock, stable_hash, staging_dir, write_json
from data.prepared import FORMAT, SPLITS, PreparedData, read_meta
from data.shards import SHARD_TOKENS, ShardWriter, token_dtype
from data.sources import Source, resolve_source
from data.tokenizer import Tokenizer, load_tokenizer


def _limited(source: Source, max_documents: int) -> Iterator[str]:
    docs = source.documents()
    return itertools.islice(docs, max_documents) if max_documents else docs


def _progress(enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(desc=desc, unit="tok", unit_scale=True, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _build(
    directory: Path, source: Source, tokenizer: Tokenizer, cfg: DataConfig, progress: bool, shard_tokens: int
) -> None:
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {split: ShardWriter(directory, split, dtype, shard_tokens) for split in SPLITS}
    start = time.perf_counter()
    with _progress(progress, "tokenizing") as bar, parallelism(cfg.num_workers):
        encoder = Encoder(tokenizer, writers, cfg.val_fraction, bar)
        encoder.add_all(_limited(source, cfg.max_documents))
    if writers["train"].tokens + writers["val"].tokens == 0:
        raise DataError(f"the corpus is empty: {source.description} has no text; check data.dataset / data.text_field")
    val_from_tail = writers["val"].tokens == 0
    if val_from_tail:  # no document could go to val (e.g. a single file): take the end of the stream
        writers["val"].write(writers["train"].take_tail(max(1, round(cfg.val_fraction * writers["train"].tokens))))
    for writer in writers.values():
        writer.close_file()
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


def prepare_data(
    data_cfg: DataConfig, progress: bool = True, shard_tokens: int = SHARD_TOKENS, log: Any = print
) -> PreparedData:
    """Prepared tokens for this data config: reused from data.cache_dir when its inputs are unchanged."""
    given = Path(data_cfg.dataset).expanduser()
    if (given / "meta.json").is_file():
        meta = read_meta(given)
        _check_tokenizer(given, meta, data_cfg.tokenizer)
        return PreparedData.open(given)
    cache = Path(data_cfg.cache_dir).expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data.cache_dir {cache} ({exc.strerror}); use a writable directory") from None
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
    corpus_key = stable_hash([source.fingerprint, data_cfg.max_documents])
    tokenizer = load_tokenizer(
        data_cfg.tokenizer, _limited(source, data_cfg.max_documents), cache / "tokenizers", corpus_key
    )
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
    with file_lock(target.parent / f".{target.name}.lock"):  # one rank prepares, the others wait and reuse
        if target.is_dir():
            try:
                return PreparedData.open(target, tokenizer)
            except DataError as exc:
                log(f"data: rebuilding damaged cache {target} ({exc})")
        log(f"data: preparing {source.description} with tokenizer {data_cfg.tokenizer} -> {target}")
        with staging_dir(target) as tmp:
            _build(tmp, source, tokenizer, data_cfg, progress, shard_tokens)
    return PreparedData.open(target, tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description="Tokenize data.dataset with data.tokenizer into cached uint16/uint32 token shards + meta.json "
        "(the trainers do this automatically; run it to prepare ahead of time or to inspect the result).",
        epilog=override_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config file (default: only built-in defaults)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args, rest = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, parse_overrides(rest))
        start = time.perf_counter()
        prepared = prepare_data(config.data, progress=not args.quiet)
    except (ConfigError, DataError) as exc:
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


if __name__ == "__main__":
    sys.exit(main())
