"""Sources: local formats, Hugging Face `datasets` (local, offline), and every bad input as one clear line."""

from __future__ import annotations

import gzip
import json
import socket
import sys
import time
from pathlib import Path

import pytest

from tinyllama.core.config import DataConfig
from tinyllama.data import util
from tinyllama.data.prepare import prepare_data
from tinyllama.data.sources import resolve_source
from tinyllama.data.util import DataError

DOCS = ["The first document is about rivers.", "The second one is about mountains.", "A third, on deserts."]


def docs_of(spec: str, **kw) -> list[str]:
    return list(resolve_source(spec, **kw).documents())


def prepare(tmp_path: Path, dataset: str, **kw):
    return prepare_data(DataConfig(dataset=dataset, cache_dir=str(tmp_path / "cache"), **kw), progress=False)


def test_local_formats(tmp_path):
    (tmp_path / "a.txt").write_text(DOCS[0])
    (tmp_path / "b.md").write_bytes(b"\xef\xbb\xbf" + DOCS[1].encode())  # a UTF-8 BOM is dropped
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": DOCS[2]}) + "\n" + json.dumps({"text": None}) + "\n")
    assert docs_of(str(tmp_path / "a.txt")) == [DOCS[0]]
    assert docs_of(str(tmp_path / "*.*")) == [DOCS[0], DOCS[1], DOCS[2], ""]
    nested = tmp_path / "deep" / "er"
    nested.mkdir(parents=True)
    (nested / "d.txt").write_text("deep")
    assert docs_of(str(tmp_path / "**" / "*.txt")) == [DOCS[0], "deep"]


def test_fingerprint_follows_content_and_options(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "x", "body": "y"}) + "\n")
    first = resolve_source(str(path)).fingerprint
    assert resolve_source(str(path)).fingerprint == first
    assert resolve_source(str(path), text_field="body").fingerprint != first
    path.write_text(json.dumps({"text": "changed", "body": "y"}) + "\n")
    assert resolve_source(str(path)).fingerprint != first


def test_missing_files_and_empty_globs(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        resolve_source(str(tmp_path / "absent.txt"))
    with pytest.raises(DataError, match="the glob matches no files"):
        resolve_source(str(tmp_path / "*.txt"))
    with pytest.raises(DataError, match="data.dataset is empty"):
        resolve_source("  ")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    for name in ("empty.txt", "blank.jsonl"):
        with pytest.raises(DataError, match="corpus is empty"):
            prepare(tmp_path, str(tmp_path / name))
        with pytest.raises(DataError, match="corpus is empty"):
            prepare(tmp_path, str(tmp_path / name), tokenizer="bpe:300")
    assert not [p for p in (tmp_path / "cache" / "prepared").iterdir() if not p.name.endswith(".lock")]


def test_corpus_shorter_than_a_sequence(tmp_path):
    from tinyllama.data.loader import BatchLoader

    (tmp_path / "tiny.txt").write_text("Too short.")
    prepared = prepare(tmp_path, str(tmp_path / "tiny.txt"))
    with pytest.raises(DataError, match=r"train split has \d+ tokens, shorter than one sequence of 65 tokens"):
        BatchLoader(prepared.tokens("train"), seq_len=64, batch_size=2, seed=0)


def test_non_utf8_names_file_and_offset(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("naïve café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: not valid UTF-8 at byte offset 2 \(byte 0xef\).*iconv"):
        docs_of(str(tmp_path / "latin1.txt"))
    assert docs_of(str(tmp_path / "latin1.txt"), errors="replace") == ["na\ufffdve caf\ufffd"]
    lines = [json.dumps({"text": "ok"}).encode(), b'{"text": "bad \xff here"}']
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=rf"bad.jsonl:2: not valid UTF-8 at byte offset {len(lines[0]) + 1 + 14}"):
        docs_of(str(tmp_path / "bad.jsonl"))
    with pytest.raises(DataError, match="bad.jsonl:2: not valid UTF-8"):  # found mid-way through preparing
        prepare(tmp_path, str(tmp_path / "bad.jsonl"), tokenizer="gpt2")
    assert (tmp_path / "cache" / "prepared").is_dir()  # it got as far as the cache ...
    left = [p.name for p in (tmp_path / "cache" / "prepared").iterdir() if p.suffix != ".lock"]
    assert left == []  # ... and left no half-prepared directory


def test_bad_jsonl_and_parquet_fields(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match=r"a.jsonl:1: no 'text' field \(found: body\); set data.text_field"):
        docs_of(str(tmp_path / "a.jsonl"))
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\n{not json}\n')
    with pytest.raises(DataError, match=r"b.jsonl:2: invalid JSON"):
        docs_of(str(tmp_path / "b.jsonl"))
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(DataError, match="is int, not text"):
        docs_of(str(tmp_path / "c.jsonl"))

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["x"], "n": [1]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"no 'text' column \(found: content, n\)"):
        docs_of(str(tmp_path / "d.parquet"))
    with pytest.raises(DataError, match="column 'n' is int64, not text"):
        docs_of(str(tmp_path / "d.parquet"), text_field="n")
    (tmp_path / "e.parquet").write_text("not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet file"):
        docs_of(str(tmp_path / "e.parquet"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A dataset repository laid out like the hub's (data/<split>-*.parquet), read by load_dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("hf_dataset")
    (root / "data").mkdir()
    pq.write_table(pa.table({"text": DOCS * 4, "id": list(range(12))}), root / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": ["held out"], "id": [0]}), root / "data" / "test-00000-of-00001.parquet")
    return root


def test_hf_load_dataset_map_style_and_streaming(hf_dir):
    map_style = resolve_source(str(hf_dir))
    assert map_style.kind == "hf" and "map-style" in map_style.description
    assert list(map_style.documents()) == DOCS * 4
    streamed = resolve_source(str(hf_dir), streaming=True)
    assert "streaming" in streamed.description
    assert list(streamed.documents()) == DOCS * 4
    assert list(resolve_source(str(hf_dir), split="test").documents()) == ["held out"]
    with pytest.raises(DataError, match="could not be loaded with datasets.*data.split"):
        resolve_source(str(hf_dir), split="validation")
    with pytest.raises(DataError, match=r"no 'body' column \(found: text, id\)"):
        list(resolve_source(str(hf_dir), text_field="body").documents())


@pytest.mark.slow
def test_data_pipeline_never_imports_torch_or_mlx(hf_dir, tmp_path):
    """data/ is framework-free even where datasets would pull torch in (streaming) or prepare runs end to end."""
    import subprocess

    (tmp_path / "a.txt").write_text(" ".join(DOCS * 30))
    code = f"""
import sys
from tinyllama.core.config import DataConfig
from tinyllama.data import corpus, encode, fast_gpt2, loader, prepare, shards, sources, store, tokenizer, util
docs = list(sources.resolve_source({str(hf_dir)!r}, streaming=True).documents())
assert len(docs) == 12, docs
data = prepare.prepare_data(DataConfig(dataset={str(tmp_path / "a.txt")!r}, cache_dir={str(tmp_path)!r}), False)
loader.BatchLoader(data.tokens("train"), 16, 2, seed=0).batch(0)
heavy = sorted(m for m in ("torch", "mlx", "transformers") if m in sys.modules)
print("imported:", heavy)
"""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1:] == ["imported: []"], result.stdout + result.stderr[-2000:]


def test_hf_save_to_disk_and_prepare(hf_dir, tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.load_dataset(str(hf_dir)).save_to_disk(str(saved))
    assert list(resolve_source(str(saved), split="test").documents()) == ["held out"]
    with pytest.raises(DataError, match=r"no split 'dev' \(has: train, test\); set data.split"):
        resolve_source(str(saved), split="dev")
    prepared = prepare(tmp_path, str(saved), val_fraction=0.25, tokenizer="bpe:300")
    assert prepared.meta["source"]["kind"] == "hf" and prepared.meta["documents"]["val"] > 0


def test_unknown_hf_name_fails_fast_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)  # restored after go_offline() sets them

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    util.hub_reachable.cache_clear()
    try:
        start = time.perf_counter()
        with pytest.raises(DataError, match="could not be loaded with datasets.*hub is unreachable"):
            resolve_source("someone/not-a-cached-dataset")
        assert time.perf_counter() - start < 20
    finally:
        util.hub_reachable.cache_clear()


def test_directory_of_parquet_files_is_streamed_in_name_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fineweb = tmp_path / "sample" / "10BT"  # FineWeb-Edu's layout: 000_00000.parquet, 000_00001.parquet, ...
    fineweb.mkdir(parents=True)
    pq.write_table(pa.table({"text": DOCS[1:], "score": [3.1, 2.9]}), fineweb / "000_00001.parquet")
    pq.write_table(pa.table({"text": DOCS[:1], "score": [4.0]}), fineweb / "000_00000.parquet")
    source = resolve_source(str(fineweb))
    assert source.kind == "files" and list(source.documents()) == DOCS
    split_named = tmp_path / "repo"
    split_named.mkdir()
    pq.write_table(pa.table({"text": DOCS[:2]}), split_named / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": DOCS[2:]}), split_named / "test-00000-of-00001.parquet")
    assert docs_of(str(split_named)) == DOCS[:2] and docs_of(str(split_named), split="test") == DOCS[2:]
