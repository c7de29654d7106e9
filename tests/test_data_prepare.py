"""prepare_data: round trips, the split, dtypes, shards, and the cache (reuse, invalidation, atomicity)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyllama.core.config import DataConfig
from tinyllama.data import encode, prepare
from tinyllama.data.prepare import main, prepare_data
from tinyllama.data.store import PreparedData, find_prepared
from tinyllama.data.tokenizer import load_tokenizer
from tinyllama.data.util import DataError

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    f"Document {i}. The river Thames flows through London; its length is {200 + i} miles.\n\nSecond paragraph {i}."
    for i in range(60)
]


def write_docs(directory: Path, docs: list[str] = DOCS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (directory / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
    return directory


def cfg(tmp_path: Path, dataset: str, **kw) -> DataConfig:
    return DataConfig(dataset=dataset, cache_dir=str(tmp_path / "cache"), **kw)


def split_docs(prepared: PreparedData, split: str) -> list[str]:
    tokens = np.asarray(prepared.tokens(split))
    eos = prepared.tokenizer.eos_id
    assert tokens[-1] == eos  # every document ends with EOS
    ends = np.flatnonzero(tokens == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [prepared.tokenizer.decode(tokens[s:e]) for s, e in zip(starts, ends, strict=True)]


def test_round_trip_text_files_with_document_split(tmp_path):
    prepared = prepare_data(cfg(tmp_path, str(write_docs(tmp_path / "corpus") / "*.txt"), val_fraction=0.1), False)
    train, val = split_docs(prepared, "train"), split_docs(prepared, "val")
    assert sorted(train + val) == sorted(DOCS)  # whole documents, each exactly once
    assert [d for d in DOCS if d in set(train)] == train  # order kept within a split
    total = sum(prepared.meta["tokens"].values())
    assert 0.05 < prepared.meta["tokens"]["val"] / total < 0.15
    assert prepared.meta["documents"] == {"train": len(train), "val": len(val)}
    assert prepared.meta["dtype"] == "uint16" and prepared.tokens("train").dtype == np.uint16
    assert not prepared.meta["val_from_tail"]
    again = prepare_data(cfg(tmp_path / "b", str(tmp_path / "corpus" / "*.txt"), val_fraction=0.1), False)
    assert split_docs(again, "val") == val  # deterministic


def test_jsonl_and_tokens_equal_direct_encoding(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS[:10])) + "\n\n")
    prepared = prepare_data(cfg(tmp_path, str(path), text_field="body", val_fraction=0.2), False)
    tok = load_tokenizer("gpt2")
    eos = [tok.eos_id]
    expected = [t for d in DOCS[:10] for t in tok.encode(d) + eos]
    both = np.concatenate([np.asarray(prepared.tokens("train")), np.asarray(prepared.tokens("val"))])
    assert sorted(both.tolist()) == sorted(expected) and len(both) == len(expected)
    assert prepared.tokenizer.fingerprint() == tok.fingerprint()


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS[:20], "n": list(range(20))}), tmp_path / "d.parquet")
    prepared = prepare_data(cfg(tmp_path, str(tmp_path / "d.parquet"), val_fraction=0.1), False)
    assert sorted(split_docs(prepared, "train") + split_docs(prepared, "val")) == sorted(DOCS[:20])


def test_the_split_counts_bytes_so_every_tokenizer_gets_the_same_val_documents(tmp_path):
    # documents whose tokens per byte differ a lot between tokenizers: a token-count split would pick others
    docs = [("Ωμέγα " * (5 + i % 7)) + ("plain words " * (3 + (i * 5) % 11)) for i in range(40)]
    corpus = write_docs(tmp_path / "c", docs)
    vals = {}
    for spec in ("gpt2", "bpe:300"):
        prepared = prepare_data(cfg(tmp_path / spec, str(corpus / "*.txt"), tokenizer=spec, val_fraction=0.2), False)
        vals[spec] = split_docs(prepared, "val")
        assert prepared.meta["split"] == "document bytes"
    assert vals["gpt2"] == vals["bpe:300"] and vals["gpt2"]
    held = encode.ValSplit(0.2)
    assert vals["gpt2"] == [d for d in docs if held.is_val(len(d.encode("utf-8")))]


def test_a_trained_tokenizer_never_sees_the_val_documents(tmp_path):
    def word(i: int) -> str:  # one made-up word per document, found nowhere else
        return "".join(chr(ord("a") + (i * 7 + k * (i % 5 + 1)) % 26) for k in range(7)) + "q"

    docs = [f"Document {i}. " + f" {word(i)}" * 40 + "." for i in range(30)]
    corpus = write_docs(tmp_path / "c", docs)
    prepared = prepare_data(cfg(tmp_path, str(corpus / "*.txt"), tokenizer="bpe:2000", val_fraction=0.2), False)
    val = split_docs(prepared, "val")
    assert 3 <= len(val) <= 9
    tok = prepared.tokenizer
    pieces = {i: len(tok.encode(" " + word(i))) for i in range(30)}
    assert all(pieces[i] == 1 for i, d in enumerate(docs) if d not in val)  # a train word is one token
    assert all(pieces[i] > 1 for i, d in enumerate(docs) if d in val)  # a val word was never learnt


def test_single_document_takes_val_from_the_tail(tmp_path):
    text = " ".join(DOCS)
    (tmp_path / "one.txt").write_text(text)
    prepared = prepare_data(cfg(tmp_path, str(tmp_path / "one.txt"), val_fraction=0.1), False)
    assert prepared.meta["val_from_tail"]
    train, val = np.asarray(prepared.tokens("train")), np.asarray(prepared.tokens("val"))
    assert len(val) == round(0.1 * (len(train) + len(val)))
    assert prepared.tokenizer.decode(np.concatenate([train, val])) == text + "<|endoftext|>"


def test_long_documents_are_cut_without_changing_ids(tmp_path, monkeypatch):
    text = "\n\n".join(DOCS) + "   spaces   and\ttabs\n\n\nend"
    tok = load_tokenizer("gpt2")
    monkeypatch.setattr(encode, "CHUNK_CHARS", 64)
    assert len(list(encode.pieces(text))) > 50 and "".join(encode.pieces(text)) == text  # the patched size
    (tmp_path / "long.txt").write_text(text)
    monkeypatch.setattr(encode, "BATCH_CHARS", 500)  # documents span several batches too
    prepared = prepare_data(cfg(tmp_path, str(tmp_path / "long.txt")), False, shard_tokens=100)
    both = np.concatenate([np.asarray(prepared.tokens("train")), np.asarray(prepared.tokens("val"))])
    assert both.tolist() == tok.encode(text) + [tok.eos_id]
    assert len(prepared.meta["shards"]["train"]) > 3  # and the shard-spanning view reads them in order


def test_multi_document_batches_and_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "BATCH_CHARS", 300)
    many = prepare_data(cfg(tmp_path / "a", str(write_docs(tmp_path / "c")) + "/*.txt"), False, shard_tokens=64)
    one = prepare_data(cfg(tmp_path / "b", str(tmp_path / "c") + "/*.txt"), False)
    for split in ("train", "val"):
        np.testing.assert_array_equal(np.asarray(many.tokens(split)), np.asarray(one.tokens(split)))
    assert len(many.meta["shards"]["train"]) > 5 and len(one.meta["shards"]["train"]) == 1


def test_uint32_for_large_vocab(tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    backend = Backend(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "t.txt").write_text("w1 w69999 w5 w69998 " * 50)
    prepared = prepare_data(cfg(tmp_path, str(tmp_path / "t.txt"), tokenizer=str(tmp_path / "tokenizer.json")), False)
    assert prepared.meta["dtype"] == "uint32" and prepared.vocab_size == 70_002
    tokens = np.concatenate([np.asarray(prepared.tokens("train")), np.asarray(prepared.tokens("val"))])
    assert tokens[:4].tolist() == [3, 70001, 7, 70000]


def test_cache_reuse_and_invalidation(tmp_path):
    corpus = write_docs(tmp_path / "c", DOCS[:10])
    base = cfg(tmp_path, str(corpus / "*.txt"))
    first = prepare_data(base, False)
    stamp = (first.path / "meta.json").stat().st_mtime_ns
    again = prepare_data(cfg(tmp_path, str(corpus / "*.txt")), False)
    assert again.path == first.path and (again.path / "meta.json").stat().st_mtime_ns == stamp  # reused

    paths = {first.path}
    for change in (
        dict(val_fraction=0.3),
        dict(tokenizer="bpe:300"),
        dict(max_documents=5),
    ):
        other = prepare_data(cfg(tmp_path, str(corpus / "*.txt"), **change), False)
        assert other.path not in paths
        paths.add(other.path)
    (corpus / "doc003.txt").write_text("An edited document, a different length.")
    edited = prepare_data(cfg(tmp_path, str(corpus / "*.txt")), False)
    assert edited.path not in paths
    assert "An edited document" in edited.tokenizer.decode(
        np.concatenate([np.asarray(edited.tokens("train")), np.asarray(edited.tokens("val"))])
    )


def test_failed_prepare_leaves_no_cache_and_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    corpus = str(write_docs(tmp_path / "c", DOCS[:10]) / "*.txt")

    def boom(self, docs, read=0):
        raise RuntimeError("killed mid-way")

    with monkeypatch.context() as m:
        m.setattr(prepare.Encoder, "add_all", boom)
        with pytest.raises(RuntimeError):
            prepare_data(cfg(tmp_path, corpus), False)
    prepared_root = tmp_path / "cache" / "prepared"
    assert [p.name for p in prepared_root.iterdir() if not p.name.endswith(".lock")] == []

    good = prepare_data(cfg(tmp_path, corpus), False)
    expected = np.asarray(good.tokens("train")).copy()
    shard = good.path / good.meta["shards"]["train"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])  # truncated by a crash or a bad copy
    with pytest.raises(DataError, match="prepare again"):
        PreparedData.open(good.path)
    rebuilt = prepare_data(cfg(tmp_path, corpus), False, log=lambda *_: None)
    np.testing.assert_array_equal(np.asarray(rebuilt.tokens("train")), expected)


def test_prepared_directory_as_dataset_and_tokenizer_mismatch(tmp_path):
    corpus = str(write_docs(tmp_path / "c", DOCS[:10]) / "*.txt")
    prepared = prepare_data(cfg(tmp_path, corpus, tokenizer="bpe:300"), False)
    reopened = prepare_data(cfg(tmp_path, str(prepared.path), tokenizer="bpe:300"), False)
    assert reopened.meta == prepared.meta
    mismatch = r"tokenizer mismatch: .*'bpe:300' \(vocab \d+, fingerprint \w+\) but data.tokenizer is 'gpt2'"
    with pytest.raises(DataError, match=mismatch + r" \(vocab 50257"):
        prepare_data(cfg(tmp_path, str(prepared.path), tokenizer="gpt2"), False)
    with pytest.raises(DataError, match=r"model.vocab_size \(256\) is smaller"):
        prepared.check_model_vocab(256)
    prepared.check_model_vocab(prepared.vocab_size)


def test_cli_prepares_and_reports_errors_in_one_line(tmp_path, capsys):
    corpus = str(write_docs(tmp_path / "c", DOCS[:10]) / "*.txt")
    assert main(["--quiet", "--data.dataset", corpus, "--data.cache_dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "prepared:" in out and "tokens:" in out
    assert main(["--data.dataset", str(tmp_path / "missing.txt"), "--data.cache_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "file not found" in err and "\n" not in err
    assert main(["--data.val_fraction", "2"]) == 2
    assert "data.val_fraction must be in (0, 1)" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess
def test_cli_subprocess_help_and_exit_code(tmp_path):
    run = [sys.executable, "-m", "data.prepare"]
    helped = subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--data.dataset" in helped.stdout and "--config" in helped.stdout
    bad = subprocess.run(
        [*run, "--data.dataset", str(tmp_path / "nothing-*.txt"), "--data.cache_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "matches no files" in bad.stderr


def test_vocab_too_large_for_the_token_dtype(tmp_path):
    from tinyllama.data.store import token_dtype

    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    with pytest.raises(DataError, match="does not fit uint32"):
        token_dtype(2**32 + 1)
    prepared = prepare_data(cfg(tmp_path, str(write_docs(tmp_path / "c", DOCS[:5]) / "*.txt")), False)
    meta = json.loads((prepared.path / "meta.json").read_text())
    meta["tokenizer"]["vocab_size"] = 100_000  # as if a 100k-vocab tokenizer had written uint16 tokens
    (prepared.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="stored as uint16 cannot hold a vocab of 100000"):
        PreparedData.open(prepared.path)


def test_find_prepared_matches_dataset_tokenizer_and_split(tmp_path):
    corpus = str(write_docs(tmp_path / "c", DOCS[:10]) / "*.txt")
    prepared = prepare_data(cfg(tmp_path, corpus, tokenizer="bpe:300", val_fraction=0.2), False)
    data = {  # the data section of the run's train_config.yaml
        "dataset": corpus,
        "max_documents": 0,
        "tokenizer": "bpe:300",
        "val_fraction": 0.2,
        "cache_dir": str(tmp_path / "cache"),
    }
    fingerprint = prepared.tokenizer.fingerprint()
    assert find_prepared(data, fingerprint) == prepared.path
    assert find_prepared(data, None) == prepared.path
    assert find_prepared({**data, "val_fraction": 0.3}, fingerprint) is None
    assert find_prepared(data, "0123456789abcdef") is None  # another tokenizer's fingerprint
    assert find_prepared({"dataset": str(prepared.path)}, fingerprint) == prepared.path  # given directly
    assert find_prepared({"dataset": str(prepared.path)}, "0123456789abcdef") is None
    sizes = prepared.meta["tokens"]
    assert find_prepared(data, fingerprint, sizes) == prepared.path  # the split a checkpoint trained on
    # a run prepared by a version whose split counted tokens: the same config, other split sizes
    assert find_prepared(data, fingerprint, {"train": sizes["train"] + 7, "val": sizes["val"] - 7}) is None
