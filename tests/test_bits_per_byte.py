"""Bits per byte: the UTF-8 bytes each token stands for (data/token_bytes.py), the targets' bytes of a val set
(core.generate.target_bytes), and bpb itself (core.metrics.bits_per_byte), against independent computations
and across tokenizers on the same text."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TEXT, TINY_MODELS, random_weights, write_word_tokenizer

from tinyllama.core.generate import target_bytes
from tinyllama.core.metrics import bits_per_byte
from tinyllama.data.bpe import train_bpe
from tinyllama.data.loader import Rows
from tinyllama.data.token_bytes import token_bytes
from tinyllama.data.tokenizer import EOS, Tokenizer, load_tokenizer
from tinyllama.torch_model.generate import as_backend
from tinyllama.torch_model.state import build_model

WORDS = "Über die Straße: 東京 und São Paulo — 42 naïve cafés, emoji 🦙🦙 and tabs\tand\nlines. " * 3


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    bpe = Tokenizer(train_bpe([*TEXT, WORDS], 300), EOS, EOS, EOS, "bpe:300")
    return {"gpt2": load_tokenizer("gpt2"), "bpe:300": bpe}


@pytest.mark.parametrize("name", ["gpt2", "bpe:300"])
def test_a_texts_tokens_add_up_to_its_utf8_bytes(name, tokenizers):
    """For byte-level BPE the count is exact: the bytes of a text's tokens are the text's bytes, whatever the
    tokenizer (multi-byte characters split across tokens included); special tokens count none."""
    tok = tokenizers[name]
    table = token_bytes(tok, tok.vocab_size + 7)  # the model's vocab may be larger: the rest count 0
    for text in (WORDS, " ".join(TEXT[:3]), "a", "🦙"):
        assert table[tok.encode(text)].sum() == len(text.encode("utf-8")), (name, text)
    assert table[tok.eos_id] == 0 and table[-7:].sum() == 0


def test_bits_per_byte_compares_two_tokenizers_on_the_same_text(tokenizers):
    """The same text in two tokenizations: different token counts, one byte count, so the same predictor quality
    (here: a uniform model over each vocabulary) is measured in comparable units."""
    counts = {}
    for name, tok in tokenizers.items():
        ids = np.array(tok.encode(WORDS))
        windows = np.stack([ids[:-1], ids[1:]], axis=1)  # (N, 2): one (input, target) pair a row
        targets, nbytes = target_bytes(windows, token_bytes(tok, tok.vocab_size))
        counts[name] = (targets, nbytes)
        uniform = math.log(tok.vocab_size)  # nats per token of a uniform guess
        expected = uniform * targets / (math.log(2) * nbytes)
        assert bits_per_byte(uniform, targets, nbytes) == pytest.approx(expected)
    (t1, b1), (t2, b2) = counts.values()
    assert t1 != t2 and b1 == b2  # every target is a token of the text but its first: the same bytes either way


def test_val_bpb_equals_an_independent_computation_through_full_logits(tokenizers):
    """bpb from the trainers' path (mean_loss, target_bytes) equals summed nats of every target from the full
    logits over (ln 2 x the bytes the target tokens decode to, counted by decoding them)."""
    tok = tokenizers["bpe:300"]
    cfg = TINY_MODELS["gqa8x2-tied"]
    cfg = type(cfg)(**{**vars(cfg), "vocab_size": 300})
    model = build_model(cfg, random_weights(cfg)).eval()
    ids = np.array(tok.encode(" ".join(TEXT)))
    windows = np.stack([ids[i : i + 17] for i in range(0, 16 * 12, 16)])  # (12, 17): ASCII text, whole tokens
    backend = as_backend(model)
    ours = bits_per_byte(backend.mean_loss(windows, 4), *target_bytes(windows, token_bytes(tok, 300)))
    with torch.no_grad():
        logits = model(torch.from_numpy(windows[:, :-1])).double()
        nats = -logits.log_softmax(-1).gather(-1, torch.from_numpy(windows[:, 1:, None])).sum().item()
    decoded = sum(len(tok.decode(row[1:]).encode("utf-8")) for row in windows)
    assert ours == pytest.approx(nats / (math.log(2) * decoded), rel=1e-5)


def test_packed_rows_count_only_the_learnt_targets(tokenizers):
    table = np.arange(10, dtype=np.int64)  # id i stands for i bytes
    y = np.array([[-1, -1, 3, 4], [5, -1, -1, 9]])
    rows = Rows(np.zeros_like(y), y, np.zeros_like(y))
    assert target_bytes(rows, table) == (4, 3 + 4 + 5 + 9)
    losses = np.array([[0.0, 0.0, 1.0, 2.0], [3.0, 0.0, 0.0, 4.0]])  # nats of the learnt targets
    assert bits_per_byte(losses.sum() / 4, 4, 21) == pytest.approx(10 / (math.log(2) * 21))
    assert math.isnan(bits_per_byte(1.0, 0, 0))


def test_a_word_level_tokenizer_counts_each_token_decoded(tmp_path):
    """Not byte-level: each id counts the UTF-8 of its own decoding (exact for words, documented as such)."""
    from tinyllama.data.tokenizer import load_tokenizer as load

    tok = load(str(write_word_tokenizer(tmp_path / "w", 20)))
    table = token_bytes(tok, 20)
    assert table[tok.encode("w5")].tolist() == [2] and table[tok.encode("w12")].tolist() == [3]
    assert table[tok.eos_id] == 0
