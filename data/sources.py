"""Where documents come from: data.dataset resolved to a fingerprint and an iterator of texts.

- `builtin`: the packaged Wikipedia sample (data/corpus.py)
- a file, a glob (`corpus/*.txt`, `**/*.jsonl`) of `.txt`-like files (one document per file),
  `.jsonl` (one document per line, field data.text_field) or `.parquet` (column data.text_field);
  `.gz` / `.bz2` / `.xz` compressed text and jsonl are read too
- a directory written by `datasets.save_to_disk`, or any other directory / Hugging Face dataset
  name, read with `datasets.load_dataset` (streaming when data.streaming); `datasets` is imported
  only on this path, as it costs seconds

The fingerprint is what the prepared-token cache is keyed on: it changes when the text may have.
"""

from __future__ import annotations

import bz2
import contextlib
import glob
import gzip
import json
import lzma
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from data import corpus
from data.util import DataError, file_stamp, go_offline, hub_reachable, stable_hash

OPENERS: dict[str, Callable[..., IO[bytes]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
JSONL = {".jsonl", ".ndjson", ".json"}
HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
FILE_SUFFIXES = {".txt", ".text", ".md", ".rst", ".csv", ".tsv", ".html", ".parquet", *JSONL, *OPENERS}
ERRORS_HINT = " or set data.encoding_errors: replace"


@dataclass
class Source:
    """A resolved data.dataset: `documents()` can be called again and yields the same texts."""

    spec: str
    kind: str  # builtin | files | hf
    fingerprint: str
    description: str
    documents: Callable[[], Iterator[str]]


# --- local files ---------------------------------------------------------------------------------


def _suffix(path: Path) -> tuple[str, Callable[..., IO[bytes]]]:
    """(format suffix, opener) with any compression suffix peeled off."""
    suffixes = [s.lower() for s in path.suffixes]
    opener: Callable[..., IO[bytes]] = open
    if suffixes and suffixes[-1] in OPENERS:
        opener = OPENERS[suffixes.pop()]
    return (suffixes[-1] if suffixes else ""), opener


def decode_utf8(data: bytes, where: str, errors: str = "strict", offset: int = 0) -> str:
    """UTF-8 text, or a DataError naming the file and byte offset of the first bad byte."""
    try:
        return data.decode("utf-8", errors=errors).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{where}: not valid UTF-8 at byte offset {offset + exc.start} (byte 0x{bad}); "
            f"convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8){ERRORS_HINT}"
        ) from None


def _text_file(path: Path, errors: str) -> Iterator[str]:
    _, opener = _suffix(path)
    with opener(path, "rb") as handle:
        yield decode_utf8(handle.read(), str(path), errors)


def _jsonl_file(path: Path, field: str, errors: str) -> Iterator[str]:
    _, opener = _suffix(path)
    offset = 0
    with opener(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            line = decode_utf8(raw, f"{path}:{lineno}", errors, offset).strip()
            offset += len(raw)
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg}); write one JSON object per line") from None
            yield _field(record, field, f"{path}:{lineno}")


def _field(record: Any, field: str, where: str) -> str:
    """The text field of one record (a jsonl line or a streamed dataset row); None reads as ""."""
    if not isinstance(record, dict) or field not in record:
        keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: no '{field}' field (found: {keys}); set data.text_field to the text's field")
    value = record[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' is {type(value).__name__}, not text; set data.text_field")
    return value


def _parquet_file(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    names = table.schema_arrow.names
    if field not in names:
        raise DataError(f"{path}: no '{field}' column (found: {', '.join(names)}); set data.text_field")
    column_type = table.schema_arrow.field(field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise DataError(f"{path}: column '{field}' is {column_type}, not text; set data.text_field")
    for batch in table.iter_batches(batch_size=4096, columns=[field]):
        for value in batch.column(0).to_pylist():
            yield value or ""


def _expand(spec: str) -> list[Path]:
    pattern = str(Path(spec).expanduser())
    if glob.has_magic(pattern):
        paths = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if Path(p).is_file()]
        if not paths:
            raise DataError(f"data.dataset '{spec}': the glob matches no files; check the pattern and directory")
        return paths
    return [Path(pattern)]


def _local_files(spec: str, field: str, errors: str) -> Source:
    paths = _expand(spec)
    for path in paths:
        if not path.is_file():
            raise DataError(f"data.dataset '{spec}': file not found: {path}; pass an existing file, glob or builtin")

    def documents() -> Iterator[str]:
        for path in paths:
            kind, _ = _suffix(path)
            if kind in JSONL:
                yield from _jsonl_file(path, field, errors)
            elif kind == ".parquet":
                yield from _parquet_file(path, field)
            else:
                yield from _text_file(path, errors)

    stamps = [file_stamp(p) for p in paths]
    what = f"{len(paths)} file{'s' if len(paths) > 1 else ''} ({paths[0]}{', ...' if len(paths) > 1 else ''})"
    fingerprint = stable_hash({"kind": "files", "files": stamps, "field": field, "errors": errors})
    return Source(spec, "files", fingerprint, what, documents)


def _builtin(cache_dir: str, max_documents: int) -> Source:
    fingerprint = stable_hash(corpus.fingerprint())
    return Source(
        "builtin", "builtin", fingerprint, corpus.SOURCE_NOTE, lambda: corpus.documents(cache_dir, max_documents)
    )


# --- Hugging Face datasets: hub names, local dataset directories, save_to_disk output ---------------


@contextlib.contextmanager
def _no_torch() -> Iterator[None]:
    """datasets' streaming code imports torch whenever it is installed (+3 s, +240 MB); data/ must not."""
    import datasets

    saved = datasets.config.TORCH_AVAILABLE
    if "torch" not in sys.modules:
        datasets.config.TORCH_AVAILABLE = False
    try:
        yield
    finally:
        datasets.config.TORCH_AVAILABLE = saved


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _hf_load(spec: str, config: str, split: str, streaming: bool) -> Any:
    if not Path(spec).expanduser().is_dir() and not hub_reachable():
        go_offline()  # use the local cache only, instead of ~25 s of retries per file
    import datasets

    path = Path(spec).expanduser()
    try:
        if path.is_dir() and _is_saved_to_disk(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{spec}: no split '{split}' (has: {', '.join(loaded)}); set data.split")
                loaded = loaded[split]
            return loaded
        with _no_torch():
            return datasets.load_dataset(spec, config or None, split=split, streaming=streaming)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ValueError, ConnectionError, ...)
        offline = "" if hub_reachable() else " (the hub is unreachable: only cached or local datasets load)"
        raise DataError(
            f"data.dataset '{spec}' could not be loaded with datasets: {_one_line(exc)}{offline}; "
            f"check the name, data.dataset_config and data.split"
        ) from None


def _hf_fingerprint(spec: str, dataset: Any, config: str, split: str, field: str) -> str:
    key: dict[str, Any] = {"kind": "hf", "spec": spec, "config": config, "split": split, "field": field}
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint:
        key["fingerprint"] = fingerprint  # content hash datasets computed for its arrow cache
    elif Path(spec).expanduser().is_dir():
        files = sorted(p for p in Path(spec).expanduser().rglob("*") if p.is_file())
        key["files"] = [file_stamp(p) for p in files]
    return stable_hash(key)


def _hf_rows(dataset: Any, field: str, spec: str) -> Iterator[str]:
    columns = getattr(dataset, "column_names", None)
    if columns is not None and field not in columns:
        raise DataError(f"{spec}: no '{field}' column (found: {', '.join(columns)}); set data.text_field")
    if hasattr(dataset, "iter") and hasattr(dataset, "num_rows"):  # map-style: fast column batches
        for batch in dataset.select_columns([field]).iter(batch_size=1024):
            for value in batch[field]:
                if value is not None and not isinstance(value, str):
                    raise DataError(f"{spec}: column '{field}' holds {type(value).__name__}, not text")
                yield value or ""
        return
    with _no_torch():
        for i, row in enumerate(dataset):
            yield _field(row, field, f"{spec} row {i}")


def _hf_source(spec: str, field: str, config: str, split: str, streaming: bool) -> Source:
    """A dataset loaded (or streamed) with `datasets`; fails fast on unknown names when offline."""
    dataset = _hf_load(spec, config, split, streaming)
    fingerprint = _hf_fingerprint(spec, dataset, config, split, field)
    mode = "streaming" if streaming and not hasattr(dataset, "num_rows") else "map-style"
    name = spec + (f" ({config})" if config else "")
    description = f"Hugging Face dataset {name} split {split}, {mode}"
    return Source(spec, "hf", fingerprint, description, lambda: _hf_rows(dataset, field, spec))


def resolve_source(
    spec: str,
    text_field: str = "text",
    cache_dir: str = "data_cache",
    max_documents: int = 0,
    hf_config: str = "",
    split: str = "train",
    streaming: bool = False,
    errors: str = "strict",
) -> Source:
    """Turn data.dataset into a Source, failing fast (one line) on missing files or unknown names."""
    spec = spec.strip()
    if not spec:
        raise DataError("data.dataset is empty; use builtin, a file or glob, or a Hugging Face dataset name")
    if spec == "builtin":
        return _builtin(cache_dir, max_documents)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _hf_source(spec, text_field, hf_config, split, streaming)
    looks_local = spec.startswith((".", "/", "~")) or path.suffix.lower() in FILE_SUFFIXES
    if path.is_file() or glob.has_magic(spec) or not HF_NAME.match(spec) or looks_local:
        return _local_files(spec, text_field, errors)
    return _hf_source(spec, text_field, hf_config, split, streaming)
