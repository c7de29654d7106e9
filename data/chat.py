"""Conversations and prompt/completion pairs as token ids with a loss mask (data.format chat | completions).

A chat row `{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}` is rendered
with the tokenizer's chat template (tokenizer_config.json's `chat_template`, rendered as transformers'
`apply_chat_template` does: jinja2, sandboxed, trim_blocks + lstrip_blocks). A completions row
`{"prompt", "completion"}` is the conversation [user: prompt, assistant: completion]. A tokenizer without a
template (GPT-2, a trained BPE: our from-scratch models) gets DEFAULT_TEMPLATE, which prepare saves into the
prepared tokenizer and so into every checkpoint trained on it: transformers, mlx_lm, llama.cpp (the GGUF
export carries it) and `infer.py --chat` then render conversations the same way.

The loss mask: assistant turn i is what render(messages[:i+1]) adds to render(messages[:i],
add_generation_prompt=True): its content and the template's end-of-turn marker, which the model must learn
to emit so that generation stops. The rendered text is tokenized piece by piece (prompt, answer, prompt,
...), so an answer's ids are exactly the ids the model must generate after the prompt `infer.py --chat`
feeds it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from tinyllama.data.loader import STARTS, TRAIN
from tinyllama.data.util import DataError

FORMATS = ("auto", "text", "chat", "completions")
ROLES = ("system", "user", "assistant", "tool")
# Zephyr's layout with the tokenizer's end-of-text token closing every turn: generation stops at EOS, which
# every tokenizer has, and no new tokens are needed in a vocabulary the model was pretrained on.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def detect_format(record: Any) -> str:
    """chat for a `messages` list, completions for prompt + completion, else text."""
    if isinstance(record, dict):
        if isinstance(record.get("messages"), list):
            return "chat"
        if "prompt" in record and "completion" in record:
            return "completions"
    return "text"


@lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise DataError(
            f"the chat template does not parse ({exc}); fix it (data.chat_template, --chat-template or the tokenizer's)"
        ) from None


def render(template: str, messages: Sequence[dict[str, str]], tokenizer: Any, add_generation_prompt: bool) -> str:
    """The conversation as text, through `template` (a jinja2 chat template)."""
    from jinja2 import TemplateError

    try:
        return _compiled(template).render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            eos_token=tokenizer.eos_token,
            bos_token=tokenizer.bos_token or "",
            unk_token=tokenizer.unk_token or "",
            tools=None,
            documents=None,
        )
    except TemplateError as exc:
        raise DataError(f"the chat template failed on a conversation: {exc}") from None


def template_of(tokenizer: Any, override: str = "") -> str:
    """The template to use: `override` (data.chat_template), else the tokenizer's, else DEFAULT_TEMPLATE."""
    return override or getattr(tokenizer, "chat_template", None) or DEFAULT_TEMPLATE


def conversation(record: Any, fmt: str, where: str) -> list[dict[str, str]]:
    """A chat or completions record as checked messages (one line naming the row otherwise)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a JSON {type(record).__name__}, not an object; write one conversation per line")
    if fmt == "completions":
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise DataError(f"{where}: 'prompt' and 'completion' must both be text (data.format completions)")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: no \'messages\' list; write {{"messages": [{{"role": ..., "content": ...}}]}}')
    out = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise DataError(
                f"{where}: message {i} needs a 'role' ({', '.join(ROLES)}) and a text 'content'; got {message!r:.80}"
            )
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: the conversation has no assistant message: nothing to learn from it")
    return out


def pieces(template: str, messages: list[dict[str, str]], tokenizer: Any) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_answer) pieces that join to the whole rendering."""
    whole = render(template, messages, tokenizer, add_generation_prompt=False)
    out, done = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(template, messages[:i], tokenizer, add_generation_prompt=True)
        through = render(template, messages[: i + 1], tokenizer, add_generation_prompt=False)
        if not (through.startswith(before) and whole.startswith(through) and len(before) >= done):
            raise DataError(
                "the chat template renders a conversation differently from its beginning (it is not "
                "append-only), so the assistant turns cannot be found; use another data.chat_template"
            )
        out += [(before[done:], False), (through[len(before) :], True)]
        done = len(through)
    out.append((whole[done:], False))
    return [(text, answer) for text, answer in out if text]


def encode_conversations(
    rows: list[list[tuple[str, bool]]], tokenizer: Any, mask_prompt: bool
) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) per conversation from its pieces, all pieces in one parallel encode_batch call. The mask
    holds TRAIN where the token is learnt as a target (answers; every token but the first without
    mask_prompt) and STARTS on the conversation's first token."""
    flat = [text for row in rows for text, _ in row]
    encoded = iter(tokenizer.encode_batch(flat))
    out = []
    for row in rows:
        ids, mask = [], []
        for _, answer in row:
            piece = next(encoded)
            ids += piece
            mask += [TRAIN if answer or not mask_prompt else 0] * len(piece)
        if mask:
            mask[0] = STARTS  # the first token is never a target of this conversation
        out.append((ids, mask))
    return out


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], template: str = "") -> list[int]:
    """Ids to feed the model for its next assistant turn (the conversation + the generation prompt)."""
    text = render(template_of(tokenizer, template), messages, tokenizer, add_generation_prompt=True)
    return tokenizer.encode(text)


def end_of_turn_ids(tokenizer: Any, template: str = "") -> set[int]:
    """Ids that end an assistant turn: EOS, and the first token the template writes after an answer
    (SmolLM2's <|im_end|>) when that is a special token of its own."""
    template = template_of(tokenizer, template)
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    tail = next((text for text, answer in pieces(template, probe, tokenizer) if answer), "")
    after = tail[tail.find("ok") + 2 :] if "ok" in tail else ""
    ids = {tokenizer.eos_id}
    first = tokenizer.encode(after)[:1]
    if first and first[0] in tokenizer.backend.get_added_tokens_decoder():  # a special token, not a word piece
        ids.add(first[0])
    return ids
