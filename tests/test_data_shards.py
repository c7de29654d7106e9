"""Shard-wise preparation: a SIGKILLed prepare resumes without re-tokenizing finished shards and ends
byte-identical to an uninterrupted one; the tiktoken GPT-2 gives the `tokenizers` GPT-2's ids."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyllama.core.config import DataConfig
from tinyllama.data import corpus, encode, prepare
from tinyllama.data.bpe import packaged_gpt2
from tinyllama.data.fast_gpt2 import is_gpt2, tiktoken_gpt2
from tinyllama.data.prepare import prepare_data
from tinyllama.data.shards import PART, PROGRESS
from tinyllama.data.tokenizer import Tokenizer, load_tokenizer
from tinyllama.data.util import DataError

ROOT = Path(__file__).resolve().parent.parent
WORDS = "river mountain <|endoftext|> café 東京 naïve 1234 don't  spaces\ttabs\n\nnew paragraph ünïcödé 🙂".split(" ")
DOCS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40 + i % 50)) + f" doc {i}." for i in range(300)]
SHARD = 400
BATCH = 1500
# the child prepares with tiny shards and batches and SIGKILLs itself in the middle of a write, well after
# some shards were finished and a progress manifest was written
CHILD = """
import os, signal, sys
from tinyllama.core.config import DataConfig
from tinyllama.data import encode, prepare, shards
encode.BATCH_CHARS = {batch}
calls = 0
write = shards.ShardWriter.write
def dying_write(self, tokens):
    global calls
    calls += 1
    if calls == {kill_at}:
        write(self, tokens[: len(tokens) // 2])  # half a write on disk, past the manifest
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, tokens)
shards.ShardWriter.write = dying_write
prepare.prepare_data(DataConfig(dataset=sys.argv[1], cache_dir=sys.argv[2]), False, shard_tokens={shard})
"""


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def shard_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("*.bin"))}


@pytest.mark.slow  # a subprocess
def test_killed_prepare_resumes_without_retokenizing_and_matches(tmp_path, monkeypatch):
    corpus_file = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    child = CHILD.format(batch=BATCH, kill_at=40, shard=SHARD)
    killed = subprocess.run(
        [sys.executable, "-c", child, str(corpus_file), str(tmp_path / "killed")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    prepared_root = tmp_path / "killed" / "prepared"
    (work,) = prepared_root.glob(".*.partial")
    progress = json.loads((work / PROGRESS).read_text())
    finished = [s for s in progress["shards"]["train"] if s["tokens"] == SHARD]
    assert len(finished) >= 3 and progress["documents_read"] > 0
    assert list(work.glob("*" + PART)), "the kill was meant to land in the middle of a shard"
    assert not [p for p in prepared_root.iterdir() if not p.name.startswith(".")]  # nothing final yet

    encoded: list[str] = []
    real = prepare.batch_encoder

    @contextlib.contextmanager
    def spy(*args, **kw):
        with real(*args, **kw) as (name, enc):

            def recording(texts):
                encoded.extend(texts)
                return enc(texts)

            yield name, recording

    monkeypatch.setattr(prepare, "batch_encoder", spy)
    monkeypatch.setattr(encode, "BATCH_CHARS", BATCH)
    logs: list[str] = []
    cfg = DataConfig(dataset=str(corpus_file), cache_dir=str(tmp_path / "killed"))
    resumed = prepare_data(cfg, False, SHARD, logs.append)
    read = progress["documents_read"]
    assert encoded == [d for d in DOCS[read:]], "only documents after the manifest are tokenized again"
    assert any("resuming after" in line for line in logs)
    assert not work.exists() and resumed.meta["resumed_tokens"] >= len(finished) * SHARD

    whole = prepare_data(DataConfig(dataset=str(corpus_file), cache_dir=str(tmp_path / "whole")), False, SHARD)
    assert resumed.path.name == whole.path.name
    assert resumed.meta["shards"] == whole.meta["shards"] and resumed.meta["tokens"] == whole.meta["tokens"]
    assert resumed.meta["documents"] == whole.meta["documents"]
    assert shard_bytes(resumed.path) == shard_bytes(whole.path)
    assert len(whole.meta["shards"]["train"]) > len(finished) + 1
    expected = sum(len(whole.tokenizer.encode(d)) + 1 for d in DOCS)  # each document + its EOS, once
    assert (
        sum(whole.meta["tokens"].values())
        == expected
        == len(np.asarray(whole.tokens("train"))) + len(np.asarray(whole.tokens("val")))
    )


def test_damaged_progress_starts_over(tmp_path):
    corpus_file = write_jsonl(tmp_path / "docs.jsonl", DOCS[:50])
    cfg = DataConfig(dataset=str(corpus_file), cache_dir=str(tmp_path / "c"))
    good = prepare_data(cfg, False, SHARD)
    work = good.path.with_name(f".{good.path.name}.partial")
    work.mkdir()
    (work / PROGRESS).write_text('{"format": 1, "key": ')  # cut short
    (work / "train-00000.bin").write_bytes(b"junk")
    good.path.rename(good.path.with_name("moved"))  # so the next prepare must build
    logs: list[str] = []
    again = prepare_data(cfg, False, SHARD, log=logs.append)
    assert shard_bytes(again.path) == shard_bytes(good.path.with_name("moved")) and not work.exists()
    assert any("starting over" in line for line in logs)


def test_shard_tokens_is_checked(tmp_path):
    with pytest.raises(DataError, match="data.shard_tokens must be at least 1"):
        prepare_data(DataConfig(dataset=str(write_jsonl(tmp_path / "d.jsonl", DOCS[:3]))), False, 0)


@pytest.mark.slow  # seconds of encoding the whole built-in corpus
def test_tiktoken_gpt2_equals_tokenizers_gpt2_on_the_builtin_corpus(tmp_path):
    encoding = tiktoken_gpt2()
    assert encoding is not None, "tiktoken is a dependency: pip install -r requirements.txt"
    tok = load_tokenizer("gpt2")
    assert is_gpt2(tok)
    docs = [d for d in corpus.documents(tmp_path) if d] + DOCS[:20] + ["", " ", "\n\n\n", "a<|endoftext|>b"]
    fast = [encoding.encode_to_numpy(d, allowed_special="all").tolist() for d in docs]
    assert fast == tok.encode_batch(docs)
    assert sum(map(len, fast)) > 600_000  # the whole corpus: hundreds of thousands of ids compared


def test_fast_and_plain_prepare_write_the_same_bytes(tmp_path, monkeypatch):
    corpus_file = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    monkeypatch.setattr(encode, "BATCH_CHARS", BATCH)
    fast = prepare_data(DataConfig(dataset=str(corpus_file), cache_dir=str(tmp_path / "a")), False, SHARD)
    plain_cfg = DataConfig(dataset=str(corpus_file), cache_dir=str(tmp_path / "b"), fast_gpt2=False)
    plain = prepare_data(plain_cfg, False, SHARD)
    assert shard_bytes(fast.path) == shard_bytes(plain.path) and len(shard_bytes(fast.path)) > 10
    assert fast.meta["encoder"] == "tiktoken" and plain.meta["encoder"] == "tokenizers"
    assert is_gpt2(fast.tokenizer)  # the copy in the prepared directory still takes the fast path


@pytest.mark.slow  # seconds of encoding the whole built-in corpus
def test_the_hubs_gpt2_serialization_takes_the_fast_path_and_others_do_not(tmp_path):
    def variant(change) -> Tokenizer:
        spec = json.loads(packaged_gpt2().to_str())
        spec["model"].pop("type")  # as the hub's openai-community/gpt2 tokenizer.json is written
        spec["model"].update(continuing_subword_prefix="", end_of_word_suffix="")
        spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
        spec["added_tokens"][0]["normalized"] = True
        spec["pre_tokenizer"].pop("use_regex")
        change(spec)
        path = tmp_path / f"tok{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(spec))
        return Tokenizer.from_file(path)

    hub_style = variant(lambda spec: None)
    assert hub_style.fingerprint() != load_tokenizer("gpt2").fingerprint() and is_gpt2(hub_style)

    def swapped(spec: dict) -> None:  # two merges in the other order: other ids for some words
        merges = spec["model"]["merges"]
        merges[0], merges[1] = merges[1], merges[0]

    for change in (
        lambda s: s["pre_tokenizer"].update(add_prefix_space=True),
        lambda s: s.update(normalizer={"type": "NFC"}),
        swapped,
        lambda s: s["model"].update(dropout=0.1),
    ):
        assert not is_gpt2(variant(change))


def test_ctrl_c_keeps_the_partial_build_and_a_failure_removes_it(tmp_path, monkeypatch):
    corpus_file = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    monkeypatch.setattr(encode, "BATCH_CHARS", BATCH)
    cfg = DataConfig(dataset=str(corpus_file), cache_dir=str(tmp_path / "c"))
    real = prepare.ShardWriter.write

    def interrupted(exc: type[BaseException]):
        calls = iter(range(60))

        def write(self, tokens):
            if next(calls) == 59:
                raise exc()
            real(self, tokens)

        return write

    monkeypatch.setattr(prepare.ShardWriter, "write", interrupted(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, False, SHARD, log=lambda *_: None)
    (work,) = (tmp_path / "c" / "prepared").glob(".*.partial")
    assert json.loads((work / PROGRESS).read_text())["documents_read"] > 0
    monkeypatch.setattr(prepare.ShardWriter, "write", interrupted(RuntimeError))
    with pytest.raises(RuntimeError):  # resumes, then fails for another reason: nothing half-made is kept
        prepare_data(cfg, False, SHARD, log=lambda *_: None)
    assert not work.exists()
    monkeypatch.setattr(prepare.ShardWriter, "write", real)
    whole = prepare_data(DataConfig(dataset=str(corpus_file), cache_dir=str(tmp_path / "w")), False, SHARD)
    assert shard_bytes(prepare_data(cfg, False, SHARD).path) == shard_bytes(whole.path)
