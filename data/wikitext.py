"""MediaWiki markup -> plain encyclopedic prose, for the built-in corpus.

mwparserfromhell parses the markup into nodes; we render only what a reader of the article
sees as running text: links become their label, templates/tables/references/files/categories
disappear, and trailing appendix sections (References, External links, ...) are cut.
"""

from __future__ import annotations

import re

import mwparserfromhell
from mwparserfromhell.nodes import Comment, ExternalLink, Heading, HTMLEntity, Tag, Template, Text, Wikilink
from mwparserfromhell.wikicode import Wikicode

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
    code = mwparserfromhell.parse(PRE_STRIP.sub("", wikitext), skip_style_tags=True)
    return _tidy(_render(_cut_appendix(code)))
