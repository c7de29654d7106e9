"""Is the Hugging Face hub usable right now? Answered in about a second, not after minutes of retries.

huggingface_hub retries an unreachable host for ~25 s per file (transformers for ~50 s), so
before any download we check HF_HUB_OFFLINE and then try one TCP connection to the endpoint.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

_TRUE = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
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
