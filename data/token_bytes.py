"""How many UTF-8 bytes of text each token id stands for: the denominator of bits per byte.

A loss per token cannot compare two tokenizers; bits per byte can: the summed nats of the targets over
(ln 2 x the bytes those targets decode to), special tokens counting no bytes (as nanochat counts them).
Exact for byte-level BPE (GPT-2, trained `bpe:N`, Llama 3, SmolLM: each character of a token's string is one
byte) and for SentencePiece-style tokens (`▁` a space, `<0xNN>` byte fallback); any other tokenizer counts the
UTF-8 of each id decoded alone, which can differ from the whole text's by a byte at word edges.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import numpy as np


@cache
def byte_level_alphabet() -> frozenset[str]:
    """The 256 characters byte-level BPE writes bytes as (GPT-2's bytes_to_unicode): one character, one byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [256 + i for i in range(256 - len(printable))]
    return frozenset(map(chr, printable + shifted))


def _kinds(spec: dict[str, Any]) -> set[str]:
    """Every component `type` in a tokenizer.json section (Sequence members included)."""
    if not isinstance(spec, dict):
        return set()
    kinds = {spec.get("type", "")}
    for key in ("decoders", "pretokenizers", "normalizers"):
        for member in spec.get(key) or []:
            kinds |= _kinds(member)
    return kinds


def token_bytes(tokenizer: Any, vocab_size: int) -> np.ndarray:
    """(vocab_size,) int64: the UTF-8 bytes each id decodes to; special tokens (and ids the tokenizer does not
    use up to the model's vocab) count 0. `tokenizer` is a data.tokenizer.Tokenizer."""
    backend = tokenizer.backend
    spec = json.loads(backend.to_str())
    specials = {t["content"] for t in spec.get("added_tokens") or [] if t.get("special")}
    byte_level = "ByteLevel" in _kinds(spec.get("decoder")) | _kinds(spec.get("pre_tokenizer"))
    alphabet = byte_level_alphabet()
    out = np.zeros(vocab_size, np.int64)
    for i in range(min(vocab_size, backend.get_vocab_size(with_added_tokens=True))):
        token = backend.id_to_token(i)
        if token is None or token in specials:
            continue
        if byte_level and all(ch in alphabet for ch in token):
            out[i] = len(token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            out[i] = 1  # SentencePiece byte fallback
        elif "▁" in token:
            out[i] = len(token.replace("▁", " ").encode("utf-8"))
        else:
            out[i] = len(backend.decode([i], skip_special_tokens=False).encode("utf-8"))
    return out
