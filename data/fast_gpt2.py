"""GPT-2 through `tiktoken`: the same ids as the `tokenizers` GPT-2, several times faster per core
(docs/benchmarks.md).

tiktoken would download its GPT-2 files on first use, which this project cannot count on (offline
machines, air-gapped clusters). So the Encoding is built here from the packaged `encoder.json` the
`tokenizers` GPT-2 is built from (data/tokenizer.py): each token string is mapped back to its bytes
through GPT-2's byte <-> unicode table, and its id is its merge rank (true for GPT-2: ids follow the
merge order). `<|endoftext|>` is a special token, as in the `tokenizers` version, so a document that
contains the literal string gets id 50256 from both.

Used only for a tokenizer that encodes exactly like the packaged GPT-2 (`is_gpt2`: the packaged copy, or
the hub's gpt2 tokenizer.json; tests compare tiktoken and `tokenizers` token for token on the built-in
corpus); anything else, or a missing tiktoken, keeps the `tokenizers` path.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from tinyllama.data.bpe import EOS, GPT2_KNOWN_IDS, packaged_files, packaged_gpt2
from tinyllama.data.tokenizer import Tokenizer
from tinyllama.data.util import DataError

# GPT-2's pre-tokenizer regex (the one `tokenizers`' ByteLevel and tiktoken's r50k_base use)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_VOCAB = 50257


def byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (bytes_to_unicode in OpenAI's encoder.py)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@functools.lru_cache(maxsize=1)
def tiktoken_gpt2() -> Any:
    """The tiktoken Encoding of the packaged GPT-2, or None without tiktoken >= 0.9 (built once)."""
    try:
        import tiktoken
    except ImportError:
        return None
    vocab_file, _ = packaged_files()
    decoder = byte_decoder()
    encoder = json.loads(vocab_file.read_text(encoding="utf-8"))
    ranks = {bytes(decoder[ch] for ch in token): rank for token, rank in encoder.items() if token != EOS}
    encoding = tiktoken.Encoding(
        "tinyllama-gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOS: encoder[EOS]}
    )
    if not hasattr(encoding, "encode_to_numpy"):  # tiktoken < 0.9
        return None
    for text, ids in GPT2_KNOWN_IDS.items():  # the same guard as the tokenizers build
        if encoding.encode(text, allowed_special="all") != ids:
            return None
    return encoding


@functools.lru_cache(maxsize=1)
def _packaged_fingerprint() -> str:
    return Tokenizer(packaged_gpt2(), EOS, EOS, EOS, "gpt2").fingerprint()


@functools.lru_cache(maxsize=1)
def _packaged_json() -> dict[str, Any]:
    """The packaged GPT-2's tokenizer.json, parsed (tens of MB of Python objects: only built when needed)."""
    return json.loads(packaged_gpt2().to_str())


def _merges(model: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]  # "a b" or ["a", "b"]


def _same_ids_as(found: dict[str, Any], packaged: dict[str, Any]) -> bool:
    """Does a parsed tokenizer.json encode exactly like the packaged GPT-2? What decides ids: the BPE model
    (vocab, merges, no dropout / prefixes / byte fallback), no normalizer, a byte-level pre-tokenizer with
    GPT-2's regex and no prefix space, and <|endoftext|> as the only added token. Post-processor and
    decoder do not change the ids of prepare (no special tokens are added)."""
    model = found.get("model") or {}
    if model.get("type", "BPE") != "BPE" or found.get("normalizer") is not None:
        return False
    options = ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")
    if any(model.get(key) for key in (*options, "ignore_merges")):
        return False
    pre = found.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return False
    if [(t.get("id"), t.get("content")) for t in found.get("added_tokens") or []] != [(GPT2_VOCAB - 1, EOS)]:
        return False
    return model.get("vocab") == packaged["model"]["vocab"] and _merges(model) == _merges(packaged["model"])


def is_gpt2(tokenizer: Tokenizer) -> bool:
    """Does `tokenizer` give exactly GPT-2's ids? The packaged copy (and its saved copies) by fingerprint;
    another serialization of the same tokenizer, such as the hub's openai-community/gpt2 tokenizer.json,
    by comparing what decides the ids (only for a 50257-id vocab with EOS 50256)."""
    if tokenizer.vocab_size != GPT2_VOCAB or tokenizer.eos_id != GPT2_VOCAB - 1:
        return False
    try:
        if tokenizer.fingerprint() == _packaged_fingerprint():
            return True
        return _same_ids_as(json.loads(tokenizer.backend.to_str()), _packaged_json())
    except DataError:  # the packaged files are missing: no fast path, the tokenizer itself still works
        return False
