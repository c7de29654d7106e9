"""The built-in corpus: real Wikipedia prose from a PyPI wheel, clean, >= 1 MB, extracted once."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from tinyllama.core.config import DataConfig
from tinyllama.data import corpus
from tinyllama.data.corpus import wiki_to_text
from tinyllama.data.prepare import prepare_data
from tinyllama.data.util import DataError

MARKUP = re.compile(r"\[\[|\]\]|\{\{|\}\}|<ref|</|\|thumb|&nbsp;|'''|^==+", re.M)


FIRST = 40  # the first 40 articles already hold > 1 MB of text; extracting all 101 takes twice as long


@pytest.fixture(scope="module")
def articles(tmp_path_factory) -> list[str]:
    return list(corpus.documents(tmp_path_factory.mktemp("builtin"), max_documents=FIRST))


@pytest.mark.slow
def test_size_and_content(articles):
    text = "\n".join(articles)
    assert len(articles) == FIRST and len(text.encode("utf-8")) >= 1_000_000
    titles = {a.split("\n", 1)[0] for a in articles}
    assert {"Anarchism", "Alabama", "Albedo", "Abraham Lincoln", "Achilles"} <= titles
    assert "Alabama is a state located in the southeastern region of the United States." in text
    assert not MARKUP.search(text), MARKUP.search(text)
    assert "\nReferences\n" not in text and "\nExternal links\n" not in text


def test_dump_holds_the_whole_corpus():
    titles = [title for title, _ in corpus.raw_articles(corpus.dump_path())]
    assert len(titles) == 106 and "Aristotle" in titles and "AccessibleComputing" not in titles  # a redirect


def test_extracted_once_then_read_from_cache(tmp_path, monkeypatch):
    calls = []

    def fake_extract(limit):
        calls.append(limit)
        return iter(["Alpha\n\nfirst article", "Beta\n\nsecond \u00e9 article", "Gamma\n\nthird"])

    monkeypatch.setattr(corpus, "_extract", fake_extract)
    assert not corpus.cache_file(tmp_path).exists()
    first = list(corpus.documents(tmp_path))
    assert calls == [0] and corpus.cache_file(tmp_path).is_file()
    assert list(corpus.documents(tmp_path)) == first and calls == [0]  # read back, not extracted again
    assert list(corpus.documents(tmp_path, max_documents=2)) == first[:2] and calls == [0]


def test_small_runs_extract_only_what_they_need(tmp_path, articles, monkeypatch):
    assert list(corpus.documents(tmp_path, max_documents=2)) == articles[:2]
    assert not corpus.cache_file(tmp_path).exists()  # a partial extraction is never cached as the whole
    assert corpus.cache_file(tmp_path, 2).is_file()
    monkeypatch.setattr(corpus, "_extract", lambda limit: pytest.fail("extracted again"))
    assert list(corpus.documents(tmp_path, max_documents=2)) == articles[:2]


def test_prepare_builtin_round_trip(tmp_path, articles):
    prepared = prepare_data(DataConfig(dataset="builtin", cache_dir=str(tmp_path), max_documents=4), progress=False)
    tokens = np.concatenate([np.asarray(prepared.tokens("train")), np.asarray(prepared.tokens("val"))])
    text = prepared.tokenizer.decode(tokens)
    assert sorted(text.split("<|endoftext|>")[:-1]) == sorted(articles[:4])
    assert "Wikipedia" in prepared.meta["source"]["description"]


def test_the_dump_is_fetched_from_the_wheel_without_installing_gensim(tmp_path, monkeypatch):
    """A real `pip download` into a temporary folder; only the checked 1.7 MB file stays."""
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path))
    path = corpus.dump_path()
    assert path.parent == tmp_path and hashlib.sha256(path.read_bytes()).hexdigest() == corpus.DUMP_SHA256
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".lock"]  # no wheel left
    monkeypatch.setattr(corpus, "_fetch_dump", lambda: pytest.fail("downloaded again"))
    assert corpus.dump_path() == path


def test_a_failed_download_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "DUMP_WHEEL", "gensim==0.0.1")  # no such release on any index
    with pytest.raises(DataError, match=r"could not be downloaded \(`pip download gensim==0.0.1`: ERROR.*data.dataset"):
        corpus.dump_path()
    assert not any(p.suffix == ".bz2" for p in tmp_path.iterdir())


def test_wiki_markup_is_stripped():
    wikitext = """{{Infobox country|name=Testland|capital=[[Cap City]]}}
'''Testland''' ({{lang-fr|Terre de test}}) is a [[country]] in [[Europe|western Europe]].<ref>{{cite web|title=T}}</ref>
Its area is {{convert|5|km2}}.<ref name="x" /> [[File:Map.png|thumb|A map of [[Testland]]]]
<!-- hidden comment -->
== History ==
Founded in 1900.&nbsp;It grew.
{| class="wikitable"
| a || b
|}
* A list item with [http://example.com an external link].

== References ==
{{reflist}}
[[Category:Countries]]
[[fr:Testland]]
"""
    text = wiki_to_text(wikitext)
    assert text == (
        "Testland (Terre de test) is a country in western Europe.\n"
        "Its area is 5 km2.\n\n"
        "History\n"
        "Founded in 1900. It grew.\n\n"
        "A list item with an external link."
    )
