"""Conversations and prompt/completion pairs as token ids with a loss mask (data.format chat | completions).

A chat row `{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}` is rendered
with the tokenizer's chat template (tokenizer_config.json's `chat_template`, rendered as transformers'
`apply_chat_template` does: jinja2, sandboxed, trim_blocks + lstrip_blocks; and bounded in time and size, as
a template is code from strangers: data/template.py). A completions row
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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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
FIX = "fix it or use another (data.chat_template; infer.py --chat-template)"


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template's jinja2 text and where it came from, which every error it causes names: a file, a
    checkpoint's or a Hub tokenizer's tokenizer_config.json, data.chat_template."""

    text: str
    source: str


DEFAULT = ChatTemplate(DEFAULT_TEMPLATE, "the default chat template")


def detect_format(record: Any) -> str:
    """chat for a `messages` list, completions for prompt + completion, else text."""
    if isinstance(record, dict):
        if isinstance(record.get("messages"), list):
            return "chat"
        if "prompt" in record and "completion" in record:
            return "completions"
    return "text"


def read_template(path: str | Path, what: str) -> ChatTemplate:
    """A template file (`what`: the option that named it), or one line: missing, unreadable, not UTF-8 text,
    binary, or empty."""
    from tinyllama.core.text import decode

    path = Path(path).expanduser()
    source = f"{what} {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc.strerror or exc}; pass a jinja2 chat template file") from None
    text = decode(data, source, DataError)
    if "\0" in text:
        raise DataError(f"{source} holds binary data (a NUL byte at offset {data.index(0)}), not a chat template")
    if not text.strip():
        raise DataError(f"{source} is empty; write a jinja2 chat template in it")
    return ChatTemplate(text, source)


def tokenizer_template(tokenizer: Any) -> ChatTemplate | None:
    """The tokenizer's own chat template (tokenizer_config.json's, or chat_template.jinja's), None without one."""
    text = getattr(tokenizer, "chat_template", None)
    if not text:
        return None
    source = getattr(tokenizer, "chat_template_source", "") or f"the chat template of tokenizer {tokenizer.name}"
    if not text.strip():
        raise DataError(f"{source} is empty; {FIX}")
    return ChatTemplate(text, source)


def template_of(tokenizer: Any, override: ChatTemplate | None = None) -> ChatTemplate:
    """The template to use: `override` (data.chat_template, --chat-template), else the tokenizer's, else ours."""
    return override or tokenizer_template(tokenizer) or DEFAULT


def _compiled(template: ChatTemplate) -> Any:
    from tinyllama.data.template import TemplateProblem, compile_template  # jinja2: only chat needs it

    try:
        return compile_template(template.text)
    except TemplateProblem as exc:
        raise DataError(f"{template.source} {exc}; {FIX}") from None


def render(
    template: ChatTemplate,
    messages: Sequence[dict[str, str]],
    tokenizer: Any,
    add_generation_prompt: bool,
    where: str = "a conversation",
) -> str:
    """The conversation as text, through `template` (jinja2, bounded: data/template.py); any failure is one line
    naming the template and `where` (a data set's row)."""
    from tinyllama.data.template import TemplateProblem
    from tinyllama.data.template import render as bounded_render

    compiled = _compiled(template)
    try:
        return bounded_render(
            compiled,
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            eos_token=tokenizer.eos_token,
            bos_token=tokenizer.bos_token or "",
            unk_token=tokenizer.unk_token or "",
            tools=None,
            documents=None,
        )
    except TemplateProblem as exc:
        raise DataError(f"{template.source} on {where}: {exc}; {FIX}") from None


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


def pieces(
    template: ChatTemplate, messages: list[dict[str, str]], tokenizer: Any, where: str = "a conversation"
) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_answer) pieces that join to the whole rendering."""
    whole = render(template, messages, tokenizer, False, where)
    out, done = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(template, messages[:i], tokenizer, True, where)
        through = render(template, messages[: i + 1], tokenizer, False, where)
        if not (through.startswith(before) and whole.startswith(through) and len(before) >= done):
            raise DataError(
                f"{template.source} renders {where} differently from its beginning (it is not append-only), so "
                f"the assistant turns cannot be found; use another (data.chat_template)"
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


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], template: ChatTemplate | None = None) -> list[int]:
    """Ids to feed the model for its next assistant turn (the conversation + the generation prompt)."""
    template = template_of(tokenizer, template)
    ids = tokenizer.encode(render(template, messages, tokenizer, True))
    if not ids:
        raise DataError(f"{template.source} renders the conversation as no text at all; {FIX}")
    return ids


def end_of_turn_ids(tokenizer: Any, template: ChatTemplate | None = None) -> set[int]:
    """Ids that end an assistant turn: EOS, and the first token the template writes after an answer
    (SmolLM2's <|im_end|>) when that is a special token of its own. Renders a probe conversation, so a broken
    template fails here, before a model is loaded."""
    template = template_of(tokenizer, template)
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    tail = next((text for text, answer in pieces(template, probe, tokenizer, "a probe conversation") if answer), "")
    after = tail[tail.find("ok") + 2 :] if "ok" in tail else ""
    ids = {tokenizer.eos_id}
    first = tokenizer.encode(after)[:1]
    if first and first[0] in tokenizer.backend.get_added_tokens_decoder():  # a special token, not a word piece
        ids.add(first[0])
    return ids
