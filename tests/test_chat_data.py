"""Conversations as training data: chat templates, the loss mask, packing, and the masked loss on both
backends against a plain reference."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODELS, random_weights

from tinyllama.core.config import load_config
from tinyllama.data.chat import (
    DEFAULT,
    DEFAULT_TEMPLATE,
    ChatTemplate,
    conversation,
    detect_format,
    end_of_turn_ids,
    pieces,
    render,
)
from tinyllama.data.loader import STARTS, TRAIN, PackedLoader, pack, packed_rows
from tinyllama.data.prepare import prepare_data
from tinyllama.data.tokenizer import load_tokenizer
from tinyllama.data.util import DataError
from tinyllama.mlx_model.state import build_model as build_mlx
from tinyllama.torch_model.state import build_model as build_torch

# ChatML as SmolLM2-Instruct's tokenizer_config.json writes it (with its default system prompt)
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOL = ChatTemplate(CHATML, "SmolLM2's template")
TALK = [
    {"role": "user", "content": "What is Alabama?"},
    {"role": "assistant", "content": "A state in the United States."},
    {"role": "user", "content": "Tell me more."},
    {"role": "assistant", "content": "Its capital is Montgomery."},
]


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def chatml_tokenizer(gpt2):
    """GPT-2 with ChatML's markers added as special tokens, as an instruct model's tokenizer has them."""
    from tokenizers import AddedToken

    tok = load_tokenizer("gpt2")
    tok.backend = tok.backend.__class__.from_str(tok.backend.to_str())
    tok.backend.add_special_tokens([AddedToken(t, special=True) for t in ("<|im_start|>", "<|im_end|>")])
    tok.chat_template = CHATML
    return tok


def test_pieces_rebuild_the_rendering_and_mark_each_answer_with_its_end_marker(gpt2, chatml_tokenizer):
    for tok, template, end in ((gpt2, DEFAULT, "<|endoftext|>\n"), (chatml_tokenizer, SMOL, "<|im_end|>\n")):
        parts = pieces(template, TALK, tok)
        assert "".join(text for text, _ in parts) == render(template, TALK, tok, add_generation_prompt=False)
        answers = [text for text, answer in parts if answer]
        assert answers == ["A state in the United States." + end, "Its capital is Montgomery." + end]
    # ChatML's automatic system prompt is prompt, never answer
    assert "You are a helpful" in [t for t, a in pieces(SMOL, TALK, chatml_tokenizer) if not a][0]


def test_end_of_turn_ids(gpt2, chatml_tokenizer):
    assert end_of_turn_ids(gpt2) == {gpt2.eos_id}
    im_end = chatml_tokenizer.backend.token_to_id("<|im_end|>")
    assert end_of_turn_ids(chatml_tokenizer) == {chatml_tokenizer.eos_id, im_end}


def test_formats_and_bad_rows():
    assert detect_format({"messages": []}) == "chat"
    assert detect_format({"prompt": "a", "completion": "b"}) == "completions"
    assert detect_format({"text": "a"}) == "text"
    assert conversation({"prompt": "2+2?", "completion": "4"}, "completions", "x")[1] == {
        "role": "assistant",
        "content": "4",
    }
    for record, problem in [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "needs a 'role'"),
        ({"messages": [{"role": "user", "content": 3}]}, "text 'content'"),
        ({"prompt": "a"}, "'prompt' and 'completion'"),
    ]:
        with pytest.raises(DataError, match=problem):
            conversation(record, "completions" if "prompt" in record else "chat", "f.jsonl row 1")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _chat_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta river stone cloud north city music".split()
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(words, int(rng.integers(2, 8))))
        a = " ".join(rng.choice(words, int(rng.integers(2, 20))))
        rows.append({"messages": [{"role": "user", "content": f"Q{i}: {q}?"}, {"role": "assistant", "content": a}]})
    return rows


def _prepare(tmp_path, rows, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = _write_jsonl(tmp_path / "chat.jsonl", rows)
    over = {"data.dataset": str(data), "data.cache_dir": str(tmp_path / "cache"), "data.tokenizer": "gpt2"}
    over.update(overrides)
    return prepare_data(load_config(None, over).data, progress=False, log=lambda *_: None)


def test_prepared_conversations_carry_the_mask_and_the_template(tmp_path, gpt2):
    rows = _chat_rows(60)
    data = _prepare(tmp_path, rows, **{"data.val_fraction": 0.1})
    assert data.conversations and data.meta["rows"]["format"] == "chat"
    tokens, masks = np.asarray(data.tokens("train")), np.asarray(data.masks("train"))
    firsts = np.flatnonzero(masks & STARTS)
    assert len(firsts) == data.meta["rows"]["conversations"]["train"] and firsts[0] == 0
    # the first conversation of the train split, token by token: loss exactly on the answer and its end marker
    end = firsts[1]
    first = next(r for r in rows if gpt2.decode(tokens[:end]).startswith(f"<|user|>\n{r['messages'][0]['content']}"))
    learnt = gpt2.decode(tokens[:end][(masks[:end] & TRAIN) > 0])
    assert learnt == first["messages"][1]["content"] + "<|endoftext|>\n"
    saved = json.loads((data.tokenizer_dir / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == DEFAULT_TEMPLATE  # goes into every checkpoint trained on it
    # mask_prompt false: every token but each conversation's first is learnt
    all_tokens = _prepare(tmp_path, rows, **{"data.val_fraction": 0.1, "data.mask_prompt": False})
    bits = np.asarray(all_tokens.masks("train"))
    assert ((bits & TRAIN) > 0).sum() == len(bits) - ((bits & STARTS) > 0).sum()
    assert all_tokens.path != data.path


def test_completions_and_a_bad_row_name_the_line(tmp_path):
    rows = [{"prompt": f"say {i}", "completion": f" {i}"} for i in range(50)]
    data = _prepare(tmp_path, rows)
    assert data.meta["rows"]["format"] == "completions"
    with pytest.raises(DataError, match=r"chat.jsonl row 3: the conversation has no assistant message"):
        _prepare(tmp_path / "b", [*_chat_rows(2), {"messages": [{"role": "user", "content": "x"}]}])


def test_packing_is_contiguous_covers_every_conversation_and_cuts_the_long_ones():
    lengths = [5, 3, 9, 2, 2, 2, 12, 4]
    masks = np.concatenate([[STARTS] + [TRAIN] * (n - 1) for n in lengths]).astype(np.uint8)
    starts, stops, cut = pack(masks, 8)
    assert cut == 2  # the 9- and 12-token conversations
    assert (stops - starts <= 8).all() and (starts[1:] >= stops[:-1]).all()
    firsts = np.flatnonzero(masks & STARTS)
    assert sorted(set(np.searchsorted(firsts, starts, side="right") - 1)) == [0, 2, 3, 6, 7]
    assert [int(x) for x in stops - starts] == [8, 8, 6, 8, 4]  # 5+3 | 9->8 | 2+2+2 | 12->8 | 4


def test_batches_are_deterministic_and_the_denominator_counts_the_step(tmp_path):
    data = _prepare(tmp_path, _chat_rows(120))
    tokens, masks = data.tokens("train"), data.masks("train")
    a = PackedLoader(tokens, masks, 64, 4, seed=3, world_size=2, grad_accum=2)
    b = PackedLoader(tokens, masks, 64, 4, seed=3, world_size=2, grad_accum=2, rank=1)
    x, y, seg = a.batch(5, 1)
    assert x.shape == y.shape == seg.shape == (4, 64)
    again = PackedLoader(tokens, masks, 64, 4, 3, 0, 2, 2).batch(5, 1)
    assert all((u == v).all() for u, v in zip(a.batch(5, 1), again, strict=True))
    counted = sum(int((loader.batch(5, m)[1] >= 0).sum()) for loader in (a, b) for m in range(2))
    assert a.denominator(5) == b.denominator(5) == counted / 4
    # a target never crosses into the next conversation, padding has segment 0 and no loss
    assert ((y >= 0) <= (seg > 0)).all()
    assert (y[seg == 0] == -1).all()


def _losses(weights, cfg, x, y, seg):
    """(torch loss, mlx loss, torch reference) for one batch, the reference from full logits and one
    forward per conversation (no packing)."""
    tm = build_torch(cfg, weights)
    mm = build_mlx(cfg, weights)
    t_loss = tm(torch.tensor(x), targets=torch.tensor(y), segments=torch.tensor(seg)).item()
    m_loss = mm(mx.array(x), targets=mx.array(y), segments=mx.array(seg)).item()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in range(len(x)):
            for s in set(seg[row].tolist()) - {0}:
                cols = np.flatnonzero(seg[row] == s)
                logits = tm(torch.tensor(x[row, cols][None]))[0]
                target = torch.tensor(y[row, cols]).long()
                total += F.cross_entropy(logits, target, ignore_index=-1, reduction="sum").item()
                count += int((target >= 0).sum())
    return t_loss, m_loss, total / count


def test_masked_packed_loss_is_the_answer_only_cross_entropy_on_both_backends():
    cfg = TINY_MODELS["gqa8x2-tied"]
    rng = np.random.default_rng(0)
    lengths = [[7, 12, 9], [20, 8], [5, 5, 5, 5, 6]]
    masks = []
    for row in lengths:
        for n in row:
            bits = (rng.random(n) < 0.5).astype(np.uint8) * TRAIN
            bits[0] = STARTS
            masks.append(bits)
    masks = np.concatenate(masks)
    tokens = rng.integers(0, cfg.vocab_size, len(masks))
    starts, stops, _ = pack(masks, 29)
    x, y, seg = packed_rows(tokens, masks, starts, stops, np.arange(len(starts)), 29, pad=0)
    assert len(starts) == 3 and (y >= 0).sum() == ((masks & TRAIN) > 0).sum()
    t_loss, m_loss, reference = _losses(random_weights(cfg), cfg, x, y, seg)
    assert abs(t_loss - reference) < 1e-5 * reference
    assert abs(m_loss - t_loss) < 1e-5 * t_loss


def test_gradient_ignores_another_conversation_in_the_same_row():
    """Packed [conversation 1 | conversation 2], loss only on conversation 2's answer: rewriting all of
    conversation 1 leaves the gradient unchanged (segments), rewriting conversation 2's user turn does not."""
    cfg = TINY_MODELS["mha4-untied"]
    weights = random_weights(cfg)
    rng = np.random.default_rng(1)
    x = rng.integers(0, cfg.vocab_size, (1, 24))
    y = rng.integers(0, cfg.vocab_size, (1, 24))
    y[0, :16] = -1  # conversation 1 (0-9) and conversation 2's prompt (10-15): no loss
    seg = np.array([[1] * 10 + [2] * 14])

    def grads(x, segments=seg):
        model = build_torch(cfg, weights)
        segments = torch.tensor(segments) if segments is not None else None
        model(torch.tensor(x), targets=torch.tensor(y), segments=segments).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    def same(a, b):
        return all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)

    first, user_turn = x.copy(), x.copy()
    first[0, :10] = rng.integers(0, cfg.vocab_size, 10)
    user_turn[0, 10:16] = rng.integers(0, cfg.vocab_size, 6)
    assert same(grads(x), grads(first))
    assert not same(grads(x), grads(user_turn))
    assert not same(grads(x, None), grads(first, None))  # without segments conversation 1 leaks in


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, CHATML], ids=["default", "chatml"])
def test_transformers_renders_the_saved_template_as_we_do(template, chatml_tokenizer, tmp_path):
    """The template saved with a prepared tokenizer renders the same text through transformers'
    apply_chat_template, so a checkpoint is chatted with as it was trained."""
    import copy

    from transformers import AutoTokenizer

    tok = copy.copy(chatml_tokenizer)
    tok.chat_template = template
    tok.save(tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    for messages, generation in ((TALK, False), (TALK[:3], True)):
        ours = render(ChatTemplate(template, "a test"), messages, tok, add_generation_prompt=generation)
        assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation) == ours


def test_parquet_and_saved_datasets_of_conversations(tmp_path):
    """The same conversations from jsonl, a parquet file and a datasets.save_to_disk directory (auto-detected
    as chat from their columns) prepare to the same tokens and masks."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _chat_rows(40, seed=3)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    made = [_prepare(tmp_path / "jsonl", rows)]
    for spec in (tmp_path / "chat.parquet", tmp_path / "saved"):
        over = {"data.dataset": str(spec), "data.cache_dir": str(tmp_path / "cache"), "data.tokenizer": "gpt2"}
        made.append(prepare_data(load_config(None, over).data, progress=False, log=lambda *_: None))
    for data in made:
        assert data.meta["rows"]["format"] == "chat"
        for split in ("train", "val"):
            assert (np.asarray(data.tokens(split)) == np.asarray(made[0].tokens(split))).all()
            assert (np.asarray(data.masks(split)) == np.asarray(made[0].masks(split))).all()
