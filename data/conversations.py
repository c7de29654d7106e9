"""Prepared conversations: chat / completions rows rendered (data/chat.py) and written as token shards with
a parallel loss-mask shard per split, and `builtin-chat`, a few thousand conversations made offline from
the built-in corpus.

```
<cache_dir>/prepared/<name>-<key>/
  meta.json                "rows" says how they were rendered; "masks" lists the mask shards
  train-00000.bin          token ids, conversations back to back (no separator: the template ends each)
  train-mask-00000.bin     one uint8 per token: bit 1 = learnt as a target, bit 2 = a conversation starts
  val-00000.bin, val-mask-00000.bin
  tokenizer/               with the chat template in tokenizer_config.json
```

Conversations go to val whole (data.val_fraction of the tokens, as for text). Unlike text shards, a killed
conversation prepare starts over: chat sets are small next to pretraining corpora (measured rate in
docs/data.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tinyllama.data import corpus
from tinyllama.data.chat import ChatTemplate, conversation, encode_conversations, pieces, read_template, template_of
from tinyllama.data.encode import ValSplit
from tinyllama.data.loader import TRAIN
from tinyllama.data.shards import SPLITS, ShardWriter
from tinyllama.data.sources import Source
from tinyllama.data.store import token_dtype
from tinyllama.data.util import DataError, stable_hash

BATCH = 512  # conversations per encode_batch call
FIRST_QUESTIONS = ("What is {}?", "Tell me about {}.", "In one sentence, what is {}?", "What do you know about {}?")
MORE_QUESTIONS = ("Give me a fact about {}.", "What else do you know about {}?", "Write one sentence about {}.")
PARAGRAPHS = 6  # conversations per article at most: one per paragraph
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def configured_template(value: str) -> ChatTemplate | None:
    """data.chat_template: None when unset, the template when the value is jinja2 text, else the file it
    names (a value without a `{` cannot be a template that uses its messages)."""
    if not value:
        return None
    if "{" in value:
        return ChatTemplate(value, "data.chat_template (inline)")
    if not value.strip():
        raise DataError("data.chat_template is blank; set it to a jinja2 template or a .jinja file, or leave it unset")
    return read_template(value, "data.chat_template")


def _sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in SENTENCE.split(paragraph) if 6 <= len(s.split()) <= 60]


def builtin_conversations(cache_dir: str, max_documents: int = 0) -> Iterator[str]:
    """Conversations from the built-in articles' first paragraphs: the first asks what the title is and is
    answered by the article's first sentence, the others ask for a fact and get a paragraph's first
    sentence; every third one has a follow-up answered by the next sentence, every fifth a system prompt.
    Deterministic (~500 conversations), so the prepared cache is reused."""
    made = 0
    for doc in corpus.documents(cache_dir):
        title, _, body = doc.partition("\n\n")
        paragraphs = [p for p in body.split("\n") if len(p.split()) >= 6][:PARAGRAPHS]
        for k, sentences in enumerate(filter(None, map(_sentences, paragraphs))):
            ask = FIRST_QUESTIONS[made % len(FIRST_QUESTIONS)] if k == 0 else MORE_QUESTIONS[made % len(MORE_QUESTIONS)]
            messages = [{"role": "system", "content": "You answer in one sentence."}] if made % 5 == 4 else []
            messages += [
                {"role": "user", "content": ask.format(title)},
                {"role": "assistant", "content": sentences[0]},
            ]
            if made % 3 == 2 and len(sentences) > 1:
                messages += [
                    {"role": "user", "content": "Tell me more."},
                    {"role": "assistant", "content": sentences[1]},
                ]
            yield json.dumps({"messages": messages}, ensure_ascii=False)
            made += 1
            if max_documents and made >= max_documents:
                return


def builtin_chat_source(cache_dir: str, max_documents: int = 0) -> Source:
    """data.dataset builtin-chat: builtin_conversations as a Source (JSON records)."""
    questions = [FIRST_QUESTIONS, MORE_QUESTIONS, PARAGRAPHS]
    fingerprint = stable_hash({"builtin-chat": 2, "corpus": corpus.fingerprint(), "questions": questions})
    description = (
        "built-in conversations (questions on the built-in corpus' articles, answered by their first sentences)"
    )
    return Source(
        "builtin-chat", "builtin", fingerprint, description, lambda: builtin_conversations(cache_dir, max_documents)
    )


def build(work: Path, docs: Iterator[str], where: str, tokenizer: Any, cfg: Any, fmt: str) -> dict[str, Any]:
    """Render, tokenize and write every row of `docs` (JSON records) into `work`; returns meta.json's extra
    keys. The tokenizer gets the template used, so that it is saved with the prepared tokenizer."""
    template = template_of(tokenizer, configured_template(cfg.chat_template))
    tokenizer.chat_template, tokenizer.chat_template_source = template.text, template.source
    dtype = token_dtype(tokenizer.vocab_size)
    tokens = {s: ShardWriter(work, s, dtype, cfg.shard_tokens) for s in SPLITS}
    masks = {s: ShardWriter(work, f"{s}-mask", np.dtype(np.uint8), cfg.shard_tokens) for s in SPLITS}
    split, rows, trained, batch = ValSplit(cfg.val_fraction), {s: 0 for s in SPLITS}, {s: 0 for s in SPLITS}, []

    def flush() -> None:
        for ids, mask in encode_conversations(batch, tokenizer, cfg.mask_prompt):
            name = "val" if split.is_val(len(ids)) else "train"
            bits = np.asarray(mask, np.uint8)
            tokens[name].write(np.asarray(ids, dtype))
            masks[name].write(bits)
            rows[name] += 1
            trained[name] += int(np.count_nonzero(bits & TRAIN))
        batch.clear()

    try:
        for n, doc in enumerate(docs, 1):
            try:
                record = json.loads(doc)
            except ValueError:
                raise DataError(
                    f"{where} row {n}: not a JSON record; data.format {fmt} needs jsonl, parquet or a dataset"
                ) from None
            row = f"{where} row {n}"
            batch.append(pieces(template, conversation(record, fmt, row), tokenizer, row))
            if len(batch) >= BATCH:
                flush()
        flush()
        for writer in (*tokens.values(), *masks.values()):
            writer.close_file()
    except BaseException:
        for writer in (*tokens.values(), *masks.values()):
            writer.abort()
        raise
    if not rows["train"] or not rows["val"]:
        raise DataError(
            f"{where}: {rows['train']} train / {rows['val']} val conversations; need at least one of each: "
            f"add conversations or raise data.val_fraction (now {cfg.val_fraction})"
        )
    return {
        "rows": {"format": fmt, "mask_prompt": cfg.mask_prompt, "conversations": rows, "trained_tokens": trained},
        "masks": {s: masks[s].shards for s in SPLITS},
        "tokens": {s: tokens[s].tokens for s in SPLITS},
        "documents": rows,
        "shards": {s: tokens[s].shards for s in SPLITS},
    }
