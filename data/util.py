"""What the data modules share: the one exception type, cache-key hashes, and a fast "is the hub usable?".

Cache keys are stable hashes of JSON-able values, so they do not depend on dict order or the process.
huggingface_hub retries an unreachable host for ~25 s per file (transformers for ~50 s), so before any
download we check HF_HUB_OFFLINE and then try one TCP connection to the endpoint (about a second).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from core.cli import UserError

_TRUE = {"1", "true", "yes", "on"}


class DataError(UserError):
    """A data problem phrased as one line that names the input and the fix; CLIs print it and exit 2."""


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
