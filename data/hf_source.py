"""Hugging Face `datasets` as a source: hub names, local dataset directories, save_to_disk output.

Kept apart from sources.py because `import datasets` costs seconds; only this path pays it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data import hub
from data.errors import DataError
from data.fsutil import file_stamp, stable_hash
from data.sources import Source, _field


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


def _load(spec: str, config: str, split: str, streaming: bool) -> Any:
    if not Path(spec).expanduser().is_dir() and not hub.hub_reachable():
        hub.go_offline()  # use the local cache only, instead of ~25 s of retries per file
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
        offline = "" if hub.hub_reachable() else " (the hub is unreachable: only cached or local datasets load)"
        raise DataError(
            f"data.dataset '{spec}' could not be loaded with datasets: {_one_line(exc)}{offline}; "
            f"check the name, data.dataset_config and data.split"
        ) from None


def _fingerprint(spec: str, dataset: Any, config: str, split: str, field: str) -> str:
    key: dict[str, Any] = {"kind": "hf", "spec": spec, "config": config, "split": split, "field": field}
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint:
        key["fingerprint"] = fingerprint  # content hash datasets computed for its arrow cache
    elif Path(spec).expanduser().is_dir():
        files = sorted(p for p in Path(spec).expanduser().rglob("*") if p.is_file())
        key["files"] = [file_stamp(p) for p in files]
    return stable_hash(key)


def _rows(dataset: Any, field: str, spec: str) -> Iterator[str]:
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


def hf_source(spec: str, field: str, config: str, split: str, streaming: bool) -> Source:
    """A dataset loaded (or streamed) with `datasets`; fails fast on unknown names when offline."""
    dataset = _load(spec, config, split, streaming)
    fingerprint = _fingerprint(spec, dataset, config, split, field)
    mode = "streaming" if streaming and not hasattr(dataset, "num_rows") else "map-style"
    name = spec + (f" ({config})" if config else "")
    description = f"Hugging Face dataset {name} split {split}, {mode}"
    return Source(spec, "hf", fingerprint, description, lambda: _rows(dataset, field, spec))
