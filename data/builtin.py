"""The built-in corpus: English Wikipedia articles that ship inside the `gensim` wheel.

gensim's test data holds a shortened dump of the first enwiki articles (Anarchism, Autism,
Albedo, Alabama, Aristotle, ...; 106 articles, ~2.8 MB of text, CC BY-SA 3.0). We find
the file without importing gensim, strip the wiki markup once and cache the plain text under
data.cache_dir, so the default `make train` works offline with only the project's requirements.
"""

from __future__ import annotations

import bz2
import importlib.metadata
import importlib.util
import itertools
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.errors import DataError
from data.fsutil import file_lock, stable_hash, write_text

DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
EXTRACTOR_VERSION = 3  # bump when wikitext.py changes what it produces
SOURCE_NOTE = "English Wikipedia articles (CC BY-SA 3.0) from the gensim wheel's test data"


def dump_path() -> Path:
    """The bz2 XML dump inside the installed gensim package (found without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / DUMP
        if path.is_file():
            return path
    raise DataError(
        "the built-in corpus needs the 'gensim' package (its wheel ships the Wikipedia sample); "
        "run `pip install -r requirements.txt` or set data.dataset to your own text files"
    )


def fingerprint() -> dict[str, Any]:
    """What identifies the built-in text: the dump's size and the extractor version (no extraction needed)."""
    return {
        "kind": "builtin",
        "dump": DUMP,
        "size": dump_path().stat().st_size,
        "extractor": EXTRACTOR_VERSION,
        "parser": importlib.metadata.version("mwparserfromhell"),
    }


def raw_articles(path: Path) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of each main-namespace, non-redirect page, in dump order."""
    with bz2.open(path) as handle:
        for _, element in ET.iterparse(handle):
            if not element.tag.endswith("}page"):
                continue
            title = element.findtext("{*}title") or ""
            text = element.findtext("{*}revision/{*}text") or ""
            main = element.findtext("{*}ns") == "0" and element.find("{*}redirect") is None
            if main and not text.lstrip().lower().startswith("#redirect"):
                yield title, text
            element.clear()


def _article(item: tuple[str, str]) -> str:
    from data.wikitext import wiki_to_text

    title, wikitext = item
    body = wiki_to_text(wikitext)
    return f"{title}\n\n{body}" if body else ""


def _extract(limit: int) -> Iterator[str]:
    # One process: ~5 s for the whole dump here; a process pool was slower on 2 busy cores.
    docs = (doc for doc in map(_article, raw_articles(dump_path())) if doc)
    return itertools.islice(docs, limit) if limit else docs


def cache_file(cache_dir: str | Path, first: int = 0) -> Path:
    """The extracted text: all articles, or (first > 0) only the first `first` ones."""
    suffix = f"-first{first}" if first else ""
    return Path(cache_dir) / "builtin" / f"enwiki-{stable_hash(fingerprint(), 12)}{suffix}.jsonl"


def _cached_extract(path: Path, limit: int) -> None:
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            lines = [json.dumps({"text": doc}, ensure_ascii=False) for doc in _extract(limit)]
            write_text(path, "\n".join(lines) + "\n")


def documents(cache_dir: str | Path, max_documents: int = 0) -> Iterator[str]:
    """The articles as plain text ("Title\\n\\nBody"), extracted once and then read from the cache.

    A run limited to max_documents that finds no full extraction extracts (and caches) only the
    first max_documents articles, so tiny test configs do not pay for the whole dump.
    """
    path = cache_file(cache_dir)
    if not path.is_file():
        path = cache_file(cache_dir, max_documents)
        _cached_extract(path, max_documents)
    with open(path, encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if max_documents and i >= max_documents:
                return
            yield json.loads(line)["text"]
