"""Hostile input for the data pipeline, fed for real: every case ends in one DataError line naming the file
and the fix (exit 2 from the CLI, no traceback), and nothing existing is lost or left half-written.

Classes: sources that are not clean UTF-8 text or are damaged (binary, Latin-1, broken jsonl lines, a JSON
array, corrupt .gz/.bz2/.xz/.parquet, empty files), files and directories swapped, a cache that is a file,
read-only or full (real mounts; skipped where mounting is not permitted), damaged prepared caches and
trained-tokenizer caches, tokenizer inputs that are not tokenizers, and what a killed prepare leaves behind.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tinyllama.core.config import DataConfig
from tinyllama.core.fs import file_lock
from tinyllama.data.prepare import prepare_data
from tinyllama.data.sources import resolve_source
from tinyllama.data.store import PreparedData
from tinyllama.data.tokenizer import load_tokenizer
from tinyllama.data.util import DataError

ROOT = Path(__file__).resolve().parent.parent
WORDS = "the river flows past old stone towns and mountains where people farm grain and keep bees".split()
OK_LINE = json.dumps({"text": "A fine first document about rivers."})


def text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def prepare(cache: Path, dataset: str | Path, **kw) -> PreparedData:
    kw.setdefault("tokenizer", "bpe:300")
    return prepare_data(DataConfig(dataset=str(dataset), cache_dir=str(cache), **kw), False, log=lambda *_: None)


def debris(cache: Path) -> list[str]:
    """Entries of the cache that are neither finished directories nor lock files."""
    left = []
    for sub, marker in (("prepared", "meta.json"), ("tokenizers", "tokenizer.json")):
        for path in (cache / sub).iterdir() if (cache / sub).is_dir() else []:
            if not (path.name.endswith(".lock") or (path.is_dir() and (path / marker).is_file())):
                left.append(f"{sub}/{path.name}")
    return left


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def one_line(exc: pytest.ExceptionInfo, *names: object) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message, message
    for name in names:
        assert str(name) in message, message
    return message


# --- sources that are not clean UTF-8 text, or are damaged ------------------------------------------------


def _compressed(opener: Callable, data: bytes, cut: bool) -> bytes:
    packed = opener(data)
    return packed[: len(packed) // 2] if cut else packed


def _parquet(path: Path, damage: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [text(40, i) for i in range(400)]}), path, row_group_size=50)
    if damage:  # overwrite data pages in the middle: the footer still reads, a row group does not
        data = bytearray(path.read_bytes())
        data[len(data) // 3 : len(data) // 3 + 1500] = b"\xab" * 1500
        path.write_bytes(bytes(data))


TEXT = text(2000).encode()
BAD_SOURCES: dict[str, tuple[Callable[[Path], None], str]] = {
    "random.txt": (lambda p: p.write_bytes(random.Random(1).randbytes(3000)), r"looks like binary data, not text"),
    "image.txt": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200)), r"looks like a PNG image"),
    "latin1.txt": (lambda p: p.write_bytes("naïve café".encode("latin-1")), r"UTF-8 at byte offset 2 \(byte 0xef\)"),
    "utf16.txt": (lambda p: p.write_bytes("hello".encode("utf-16")), r"looks like UTF-16 text.*iconv -f utf-16"),
    "packed.txt": (lambda p: p.write_bytes(gzip.compress(TEXT)), r"gzip-compressed data.*rename it to end in .gz"),
    "json.jsonl": (lambda p: p.write_text(f"{OK_LINE}\n{{not json}}\n"), r"json.jsonl:2: invalid JSON at byte offset"),
    "utf8.jsonl": (
        lambda p: p.write_bytes(f'{OK_LINE}\n{{"text": "\xff"}}\n'.encode("latin-1")),
        r":2: not valid UTF-8",
    ),
    "list.jsonl": (lambda p: p.write_text(f"{OK_LINE}\n[1, 2]\n"), r"list.jsonl:2: a JSON array, not an object"),
    "number.jsonl": (lambda p: p.write_text(f'{OK_LINE}\n{{"text": 5}}\n'), r"number.jsonl:2: field 'text' is int"),
    "escape.jsonl": (lambda p: p.write_text('{"text": "ok \\ud800"}\n'), r"escape.jsonl:1: .*lone surrogate \\ud800"),
    "array.json": (lambda p: p.write_text(json.dumps([{"text": "a"}], indent=1)), r"holds a JSON array.*jq -c"),
    "cut.txt.gz": (lambda p: p.write_bytes(_compressed(gzip.compress, TEXT, True)), r"damaged or not gzip-compr"),
    "plain.txt.gz": (lambda p: p.write_bytes(TEXT), r"damaged or not gzip-compressed \(Not a gzipped file"),
    "crc.jsonl.gz": (lambda p: p.write_bytes(gzip.compress(TEXT)[:-8] + bytes(8)), r"damaged or not gzip-compr"),
    "cut.txt.bz2": (lambda p: p.write_bytes(_compressed(bz2.compress, TEXT, True)), r"damaged or not bzip2-compr"),
    "plain.jsonl.bz2": (lambda p: p.write_bytes(TEXT), r"damaged or not bzip2-compressed"),
    "cut.txt.xz": (lambda p: p.write_bytes(_compressed(lzma.compress, TEXT, True)), r"damaged or not xz-compressed"),
    "plain.txt.xz": (lambda p: p.write_bytes(TEXT), r"damaged or not xz-compressed"),
    "junk.parquet": (lambda p: p.write_bytes(random.Random(2).randbytes(3000)), r"not a readable parquet file"),
    "pages.parquet": (lambda p: _parquet(p, damage=True), r"damaged parquet data"),
    "empty.txt": (lambda p: p.write_bytes(b""), r"the corpus is empty: 1 file \("),
    "latin1.parquet": (
        lambda p: _latin1_parquet(p),
        r"'text' row 3: not valid UTF-8 at byte offset 2 of the value \(byte 0xef\)",
    ),
}


def _latin1_parquet(path: Path) -> None:
    """A parquet string column holding Latin-1 bytes: pyarrow writes it without checking, as other tools do."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = [text(40, 0).encode(), text(40, 1).encode(), "naïve café".encode("latin-1")]
    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
    column = pa.Array.from_buffers(
        pa.string(), 3, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(values))]
    )
    pq.write_table(pa.table({"text": column}), path)


@pytest.mark.parametrize("name", sorted(BAD_SOURCES))
def test_bad_source_is_one_line_naming_the_file(tmp_path, name):
    write, pattern = BAD_SOURCES[name]
    path = tmp_path / "in" / name
    path.parent.mkdir()
    write(path)
    before = hashes(tmp_path / "in")
    tokenizers = ("bpe:300", "gpt2") if name in ("random.txt", "json.jsonl", "cut.txt.gz", "pages.parquet") else ()
    for tokenizer in tokenizers or ("bpe:300",):
        with pytest.raises(DataError, match=pattern) as exc:
            prepare(tmp_path / "cache", path, tokenizer=tokenizer)
        one_line(exc, path)
    assert debris(tmp_path / "cache") == []
    assert hashes(tmp_path / "in") == before


def test_replace_reads_what_strict_refuses(tmp_path):
    for name in ("random.txt", "latin1.txt", "utf8.jsonl", "escape.jsonl", "latin1.parquet"):
        path = tmp_path / name
        BAD_SOURCES[name][0](path)
        docs = list(resolve_source(str(path), errors="replace").documents())
        assert any("\ufffd" in doc for doc in docs), name
        prepared = prepare(tmp_path / "cache", path, encoding_errors="replace")
        assert len(prepared.tokens("train")) > 0


def test_good_compressed_parquet_reads(tmp_path):
    _parquet(tmp_path / "d.parquet", damage=False)
    (tmp_path / "d.parquet.gz").write_bytes(gzip.compress((tmp_path / "d.parquet").read_bytes()))
    assert list(resolve_source(str(tmp_path / "d.parquet.gz")).documents()) == [text(40, i) for i in range(400)]


def test_files_and_directories_swapped(tmp_path):
    (tmp_path / "notes.txt").write_text(text(50))
    (tmp_path / "corpus.txt").mkdir()  # a directory where a file is expected
    with pytest.raises(DataError, match=r"could not be loaded with datasets.*glob such as") as exc:
        prepare(tmp_path / "cache", tmp_path / "corpus.txt")
    one_line(exc, tmp_path / "corpus.txt")
    with pytest.raises(DataError, match="is a file, not a directory") as exc:  # and the reverse
        prepare(tmp_path / "cache", tmp_path / "notes.txt" / "inner.txt")
    one_line(exc, tmp_path / "notes.txt")
    with pytest.raises(DataError, match="no tokenizer.json") as exc:
        prepare(tmp_path / "cache", tmp_path / "notes.txt", tokenizer=str(tmp_path / "corpus.txt"))
    one_line(exc, tmp_path / "corpus.txt")
    for cache in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "sub"):  # data.cache_dir is a file
        with pytest.raises(DataError, match="a file stands where a directory is expected") as exc:
            prepare(cache, tmp_path / "notes.txt")
        one_line(exc, f"data.cache_dir {cache}")
    (tmp_path / "c2").mkdir()
    (tmp_path / "c2" / "prepared").write_text("in the way")
    with pytest.raises(DataError, match=r"a file stands .*c2/prepared"):
        prepare(tmp_path / "c2", tmp_path / "notes.txt", tokenizer="gpt2")
    assert (tmp_path / "notes.txt").read_text() == text(50) and (tmp_path / "c2" / "prepared").is_file()


# --- a cache that is read-only or full: real mounts ----------------------------------------------------------


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[None]:
    """`mount *args target` for the block (root only); skips the test with the reason where it is not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"cannot mount here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip() or done.returncode}")
    try:
        yield
    finally:  # lazily when a failed test still holds a memmap on it
        if subprocess.run(["umount", str(target)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def writable(directory: Path) -> bool:
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError:
        return False
    return True


def test_read_only_cache_serves_what_it_holds_and_refuses_the_rest(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text(text(300))
    first = prepare(tmp_path / "cache", corpus)
    expected = np.asarray(first.tokens("train")).copy()
    before = hashes(tmp_path / "cache")
    view = tmp_path / "ro"
    with mounted(view, "--bind", "-o", "ro", str(tmp_path / "cache")):
        if writable(view):  # older mount(8) ignores ro on --bind: remount it
            subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True, timeout=30)
            if writable(view):
                pytest.skip("cannot make a read-only bind mount here")
        again = prepare(view, corpus)  # complete: read without taking the lock
        np.testing.assert_array_equal(np.asarray(again.tokens("train")), expected)
        del again
        for tokenizer in ("gpt2", "bpe:260"):
            with pytest.raises(DataError, match="not writable.*Read-only file system") as exc:
                prepare(view, corpus, tokenizer=tokenizer)
            one_line(exc, f"data.cache_dir {view}", "set data.cache_dir to a writable directory")
    assert hashes(tmp_path / "cache") == before


def test_full_disk_leaves_no_debris_keeps_earlier_work_and_recovers(tmp_path):
    """A 2 MB tmpfs: one small preparation fits; a larger one runs out of space in the shards, GPT-2 runs out
    writing its 2 MB tokenizer.json. Each is one line; the earlier preparation and the source stay intact."""
    disk = tmp_path / "disk"
    (tmp_path / "small.txt").write_text(text(300))
    (tmp_path / "large.txt").write_text(text(60_000, seed=3))
    with mounted(disk, "-t", "tmpfs", "-o", "size=2m", "tmpfs"):
        cache = disk / "cache"
        earlier = prepare(cache, tmp_path / "small.txt")
        earlier_tokens = np.asarray(earlier.tokens("train")).copy()
        del earlier
        kept, sources = hashes(cache), [(tmp_path / n).read_bytes() for n in ("small.txt", "large.txt")]
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler = disk / "filler"
        filler.write_bytes(bytes(free - (64 << 10)))  # 64 KB left: the large corpus needs ~200 KB of tokens
        for tokenizer in ("bpe:300", "gpt2"):
            if tokenizer == "gpt2":
                filler.unlink()  # room for the shards, not for GPT-2's tokenizer.json
            with pytest.raises(DataError, match="no space left on its disk") as exc:
                prepare(cache, tmp_path / "large.txt", tokenizer=tokenizer)
            one_line(exc, f"data.cache_dir {cache}", "free some space or set data.cache_dir elsewhere")
            assert debris(cache) == [], tokenizer
            assert {k: v for k, v in hashes(cache).items() if k in kept} == kept
        reopened = prepare(cache, tmp_path / "small.txt")  # the earlier work is still usable
        np.testing.assert_array_equal(np.asarray(reopened.tokens("train")), earlier_tokens)
        del reopened
        recovered = prepare(cache, tmp_path / "large.txt")  # with room again it succeeds
        assert len(recovered.tokens("train")) > 50_000
        del recovered
        assert debris(cache) == [] and [(tmp_path / n).read_bytes() for n in ("small.txt", "large.txt")] == sources


# --- damaged caches -------------------------------------------------------------------------------------


def _edit_meta(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        meta = json.loads((path / "meta.json").read_text())
        result = change(meta)
        (path / "meta.json").write_text(json.dumps(meta if result is None else result))

    return damage


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "shard truncated": (lambda p: (p / "train-00000.bin").write_bytes(b"\x01"), "train-00000.bin: missing or not"),
    "shard missing": (lambda p: (p / "val-00000.bin").unlink(), "val-00000.bin: missing or not"),
    "meta missing": (lambda p: (p / "meta.json").unlink(), "no meta.json; not a prepared data directory"),
    "meta not JSON": (lambda p: (p / "meta.json").write_text("{oops"), "meta.json: not valid JSON"),
    "meta not UTF-8": (lambda p: (p / "meta.json").write_bytes(b"\xff\xfe{}"), "meta.json: not valid JSON"),
    "meta a list": (_edit_meta(lambda m: [m]), "meta.json: holds a JSON array, not an object"),
    "meta null": (lambda p: (p / "meta.json").write_text("null"), "meta.json: holds a JSON null"),
    "dtype missing": (_edit_meta(lambda m: m.pop("dtype") and None), "dtype is None"),
    "dtype bogus": (_edit_meta(lambda m: m.update(dtype="float7")), "dtype is 'float7'"),
    "tokenizer a string": (_edit_meta(lambda m: m.update(tokenizer="gpt2")), "'tokenizer' is missing or not an object"),
    "vocab a string": (_edit_meta(lambda m: m["tokenizer"].update(vocab_size="big")), "'tokenizer.vocab_size'"),
    "shards missing": (_edit_meta(lambda m: m.pop("shards") and None), "'shards' is missing"),
    "shard escapes": (_edit_meta(lambda m: m["shards"]["train"][0].update(file="../x.bin")), "no plain file name"),
    "shard count wrong": (_edit_meta(lambda m: m["tokens"].update(train=1)), "the 'train' shards hold"),
    "tokens missing": (_edit_meta(lambda m: m.pop("tokens") and None), "'tokens' is missing"),
    "tokenizer dir missing": (lambda p: __import__("shutil").rmtree(p / "tokenizer"), "tokenizer.json: missing or"),
    "tokenizer.json junk": (lambda p: (p / "tokenizer" / "tokenizer.json").write_bytes(b"\0junk"), "damaged"),
    "tokenizer config junk": (lambda p: (p / "tokenizer" / "tokenizer_config.json").write_text("[1,"), "damaged"),
}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": text(60, i)}) for i in range(30)) + "\n")
    return path


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_cache_is_rebuilt_and_damaged_directory_is_one_line(tmp_path, small_corpus, case):
    damage, pattern = DAMAGE[case]
    good = prepare(tmp_path / "cache", small_corpus, val_fraction=0.2)
    expected = {split: np.asarray(good.tokens(split)).copy() for split in ("train", "val")}
    path = good.path
    del good
    damage(path)
    with pytest.raises(DataError, match=pattern) as exc:  # given directly as data.dataset: one line
        prepare(tmp_path / "other", path, val_fraction=0.2)
    one_line(exc, path, "prepare again")
    rebuilt = prepare(tmp_path / "cache", small_corpus, val_fraction=0.2)  # in the cache: rebuilt
    assert rebuilt.path == path and debris(tmp_path / "cache") == []
    for split, tokens in expected.items():
        np.testing.assert_array_equal(np.asarray(rebuilt.tokens(split)), tokens)
    assert PreparedData.open(path).tokenizer.fingerprint() == rebuilt.tokenizer.fingerprint()


def test_damaged_trained_tokenizer_is_trained_again(tmp_path, small_corpus):
    first = prepare(tmp_path / "cache", small_corpus)
    (trained,) = [p for p in (tmp_path / "cache" / "tokenizers").glob("bpe300-*") if p.is_dir()]
    (trained / "tokenizer.json").write_bytes(b"\x00 half a tokenizer")
    again = prepare(tmp_path / "cache", small_corpus)
    assert again.tokenizer.fingerprint() == first.tokenizer.fingerprint() and again.path == first.path
    assert json.loads((trained / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    assert debris(tmp_path / "cache") == []


def test_killed_prepare_debris_is_swept_but_a_live_writer_is_left_alone(tmp_path, small_corpus):
    cache = tmp_path / "cache"
    done = prepare(cache, small_corpus)
    prepared = cache / "prepared"
    dead = prepared / ".docs.jsonl-0123456789abcdef.tmp-999999"  # a killed writer's half-built directory
    dead.mkdir()
    (dead / "train-00000.bin").write_bytes(b"\0" * 100)
    moved = prepared / f".{done.path.name}.old-999999"  # killed between atomic_path's two renames
    done.path.rename(moved)
    live = prepared / ".docs.jsonl-fedcba9876543210.tmp-999998"
    live.mkdir()
    with file_lock(prepared / ".docs.jsonl-fedcba9876543210.lock"):  # its writer still holds the lock
        prepare(cache, small_corpus, val_fraction=0.3)  # building anything sweeps the rest
        assert not dead.exists() and live.is_dir()
    assert done.path.is_dir() and not moved.exists()  # put back, and usable without a rebuild
    assert prepare(cache, small_corpus).meta["seconds"] == done.meta["seconds"]


# --- tokenizer inputs -----------------------------------------------------------------------------------


def _write(name: str, data: bytes | str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path.parent if "/" in name else path

    return make


BAD_TOKENIZERS: dict[str, tuple[Callable[[Path], Path | str], str]] = {
    "binary file": (_write("tok.json", bytes(range(256)) * 4), r"tok.json: not a valid tokenizer.json"),
    "other JSON": (_write("tok.json", '{"a": 1}'), r"tok.json: not a valid tokenizer.json"),
    "JSON list": (_write("tok.json", "[1, 2]"), r"tok.json: not a valid tokenizer.json"),
    "half a tokenizer": (_write("tok.json", '{"version": "1.0", "model": {"type": "BPE"}}'), r"not a valid tokenizer"),
    "text file": (_write("notes.txt", "hello"), r"notes.txt: not a valid tokenizer.json"),
    "empty dir": (lambda root: (root / "d").mkdir(parents=True) or root / "d", r"d: no tokenizer.json"),
    "junk in dir": (_write("d/tokenizer.json", b"\xff\x00"), r"d/tokenizer.json: not a valid tokenizer.json"),
    "bpe:abc": (lambda root: "bpe:abc", r"'bpe:abc': expected bpe:<vocab size>"),
    "bpe:10": (lambda root: "bpe:10", r"'bpe:10': a byte-level BPE needs a vocab of at least 257"),
    "bpe:huge": (lambda root: "bpe:99999999999", r"'bpe:99999999999': a vocab over \d+ ids is not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENIZERS))
def test_bad_tokenizer_is_one_line(tmp_path, case):
    make, pattern = BAD_TOKENIZERS[case]
    spec = str(make(tmp_path / "tok"))
    (tmp_path / "a.txt").write_text(text(100))
    with pytest.raises(DataError, match=pattern) as exc:
        prepare(tmp_path / "cache", tmp_path / "a.txt", tokenizer=spec)
    one_line(exc, spec)
    assert debris(tmp_path / "cache") == []


def test_damaged_tokenizer_side_files_are_one_line(tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    backend = Backend(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1, "a": 2}, unk_token="[UNK]"))
    for name, content, pattern in (
        ("tokenizer_config.json", b"\xff\xfe", "tokenizer_config.json: not valid JSON"),
        ("special_tokens_map.json", b"[1]", "special_tokens_map.json: holds a JSON array"),
    ):
        directory = tmp_path / name.split(".")[0]
        directory.mkdir()
        backend.save(str(directory / "tokenizer.json"))
        (directory / name).write_bytes(content)
        with pytest.raises(DataError, match=pattern) as exc:
            load_tokenizer(str(directory))
        one_line(exc, directory / name)
    gpt2_style = tmp_path / "gpt2style"
    gpt2_style.mkdir()
    (gpt2_style / "vocab.json").write_text('{"a": 0, "b": 1}')
    (gpt2_style / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(DataError, match=r"merges.txt:2: expected one merge 'left right'") as exc:
        load_tokenizer(str(gpt2_style))
    one_line(exc, gpt2_style / "merges.txt")
    (gpt2_style / "vocab.json").write_text("[1]")
    with pytest.raises(DataError, match=r"vocab.json: holds a JSON array"):
        load_tokenizer(str(gpt2_style))


# --- the command line: exit 2, one line, no traceback -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated gz", "damaged tokenizer"])
def test_cli_exit_2_one_line(tmp_path, case):
    source = tmp_path / "cut.txt.gz"
    source.write_bytes(_compressed(gzip.compress, TEXT, True))
    args = ["--data.dataset", str(source), "--data.tokenizer", "bpe:300"]
    named = source
    if case == "damaged tokenizer":
        (tmp_path / "ok.txt").write_text(text(200))
        (tmp_path / "tok.json").write_bytes(b"\x89PNG\r\n")
        args = ["--data.dataset", str(tmp_path / "ok.txt"), "--data.tokenizer", str(tmp_path / "tok.json")]
        named = tmp_path / "tok.json"
    run = [sys.executable, "-m", "data.prepare", "--config", "configs/smoke.yaml", "--data.cache_dir"]
    done = subprocess.run([*run, str(tmp_path / "cache"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert str(named) in lines[0]
    assert debris(tmp_path / "cache") == []
