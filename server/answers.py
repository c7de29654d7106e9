"""OpenAI's response objects for completions and chat, whole or as server-sent-event chunks.

A streamed answer is the same text cut into pieces: its chunks' text joins to the non-streamed answer's,
since both are built from the engine's events (server/engine.py). Log-probabilities are the model's own
(log-softmax of its logits), as vLLM reports them, not the sampling distribution's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from tinyllama.server.engine import Done, TokenInfo

Decode = Callable[[list[int]], str]


class Answer:
    """Builds one request's answer from its events: `chunk(...)` for each streamed piece, `whole()` at the end."""

    def __init__(self, chat: bool, model: str, decode: Decode):
        self.chat, self.model, self.decode = chat, model, decode
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.text: list[str] = []
        self.tokens: list[TokenInfo] = []
        self.offset = 0  # characters so far (completions' text_offset)
        self.offsets: list[int] = []

    def add(self, text: str, tokens: list[TokenInfo]) -> None:
        for _ in tokens:
            self.offsets.append(self.offset)
        self.text.append(text)
        self.tokens += tokens
        self.offset += len(text)

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def role_chunk(self) -> dict[str, Any]:
        """A chat stream's first chunk: the assistant's role, no content yet."""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def chunk(self, text: str, tokens: list[TokenInfo], logprobs: bool, finish: str | None = None) -> dict[str, Any]:
        lp = self._logprobs(tokens, self.offsets[len(self.offsets) - len(tokens) :]) if logprobs else None
        if self.chat:
            delta = {"content": text} if text or finish is None else {}
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, done: Done) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(kind), "choices": [], "usage": usage(done)}

    def whole(self, done: Done, logprobs: bool) -> dict[str, Any]:
        text = "".join(self.text)
        lp = self._logprobs(self.tokens, self.offsets) if logprobs else None
        if self.chat:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "logprobs": lp, "finish_reason": done.reason}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage(done)}
        choice = {"text": text, "index": 0, "logprobs": lp, "finish_reason": done.reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage(done)}

    def _logprobs(self, tokens: list[TokenInfo], offsets: list[int]) -> dict[str, Any]:
        if self.chat:
            content = [
                {**self._token(t.id, t.logprob), "top_logprobs": [self._token(i, lp) for i, lp in t.top]}
                for t in tokens
            ]
            return {"content": content}
        return {
            "tokens": [self.decode([t.id]) for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{self.decode([i]): lp for i, lp in t.top} for t in tokens],
            "text_offset": offsets,
        }

    def _token(self, token: int, logprob: float) -> dict[str, Any]:
        text = self.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", "surrogatepass"))}


def usage(done: Done) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
