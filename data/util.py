"""What the data modules share: the one exception type, cache-key hashes, a fast "is the hub usable?", and a
download fetched once into the user's cache (the built-in corpora).

Every failure a user can cause (a bad file, a full or read-only cache, a damaged download) leaves data/ as a
DataError whose one line names the file or key and the fix; OSErrors are turned into such lines here.

Cache keys are stable hashes of JSON-able values, so they do not depend on dict order or the process.
huggingface_hub retries an unreachable host for ~25 s per file (transformers for ~50 s), so before any
download we check HF_HUB_OFFLINE and then try one TCP connection to the endpoint (about a second).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tinyllama.core.cli import UserError
from tinyllama.core.fs import atomic_path, file_lock

_TRUE = {"1", "true", "yes", "on"}


class DataError(UserError):
    """A data problem phrased as one line that names the input and the fix; CLIs print it and exit 2."""


JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages ("a JSON array, not an object")."""
    return "null" if value is None else JSON_TYPES.get(type(value), type(value).__name__)


def os_reason(exc: OSError) -> str:
    """`strerror` plus the file it concerns: what an OSError says, on one line."""
    lines = str(exc).strip().splitlines()
    reason = exc.strerror or (lines[0] if lines else type(exc).__name__)
    return f"{reason}: {exc.filename}" if exc.filename else reason


def cache_error(cache: Path, exc: OSError) -> DataError:
    """A failed write under data.cache_dir (full disk, read-only, a file in the way) as one line with the fix."""
    where = f"data.cache_dir {cache}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        file = f" writing {exc.filename}" if exc.filename else ""
        return DataError(f"{where}: no space left on its disk{file}; free some space or set data.cache_dir elsewhere")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DataError(f"{where}: not writable ({os_reason(exc)}); set data.cache_dir to a writable directory")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return DataError(
            f"{where}: a file stands where a directory is expected ({os_reason(exc)}); "
            f"move it or set data.cache_dir elsewhere"
        )
    return DataError(f"{where}: cannot write ({os_reason(exc)}); check it or set data.cache_dir elsewhere")


def stable_hash(obj: Any, length: int = 16) -> str:
    """A hex digest of a JSON-able value that does not depend on dict order or the process."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def file_stamp(path: Path) -> dict[str, Any]:
    """Identity of a file for cache keys: name, size and modification time (cheap, no full read)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def offline_requested() -> bool:
    """Did the user ask huggingface_hub / datasets to stay offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE)?"""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """True when downloads may be attempted: not forced offline and the endpoint accepts a connection."""
    if offline_requested():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Make huggingface_hub / datasets use only their local caches from now on in this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
        try:
            mod = __import__(module, fromlist=[attr])
        except ImportError:
            continue
        setattr(mod, attr, True)


def fetched_once(path: Path, size: int, fetch: Callable[[], bytes]) -> Path:
    """`path` (a download kept in the user's cache): written from `fetch()`, all or nothing, unless a file of `size`
    bytes is already there; one process fetches while any other waits on its lock and then reuses the file."""
    if not (path.is_file() and path.stat().st_size == size):
        with file_lock(path.with_name(path.name + ".lock")):
            if not (path.is_file() and path.stat().st_size == size):
                data = fetch()
                with atomic_path(path) as tmp:
                    tmp.write_bytes(data)
    return path
