"""Train a small byte-level BPE on the corpus (`data.tokenizer: bpe:<vocab_size>`).

A tiny model spends most of its step in the vocab-sized softmax, so tests and laptop runs want a
vocab of a few hundred to a few thousand tokens fitted to their own text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend

from data.errors import DataError
from data.gpt2 import EOS, byte_level_bpe

MIN_VOCAB = 257  # 256 byte symbols + the end-of-text token
MAX_TRAIN_CHARS = 200_000_000  # enough text to fit merges; bounds training time on huge corpora


def parse_spec(spec: str) -> int:
    """`bpe:4096` -> 4096, with a one-line error for anything else."""
    _, _, size = spec.partition(":")
    try:
        vocab_size = int(size)
    except ValueError:
        raise DataError(f"data.tokenizer '{spec}': expected bpe:<vocab size>, e.g. bpe:4096") from None
    if vocab_size < MIN_VOCAB:
        raise DataError(f"data.tokenizer '{spec}': a byte-level BPE needs a vocab of at least {MIN_VOCAB}")
    return vocab_size


def _capped(texts: Iterable[str], seen: list[int]) -> Iterator[str]:
    for text in texts:
        yield text
        seen[0] += len(text)
        if seen[0] >= MAX_TRAIN_CHARS:
            return


def train_bpe(texts: Iterable[str], vocab_size: int) -> Backend:
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
        raise DataError("the corpus is empty: there is no text to train the BPE tokenizer on; check data.dataset")
    return backend
