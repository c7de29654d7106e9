"""OpenAI's request bodies, checked: a body becomes a `Request`, or an ApiError that the server sends as
OpenAI's error object (`{"error": {"message", "type", "param", "code"}}`) with a 4xx status.

Only what this server can honour is accepted: one prompt and one choice per request (`n` 1), no `echo`,
`suffix`, `best_of`, `logit_bias` or tool calls, presence/frequency penalties 0 (`repetition_penalty`, as
vLLM spells it, is the penalty this project has). Sampling numbers go through core.sampling.sampling_params,
the parser infer.py uses (finite, in range). Fields no rule names (`user`, `metadata`, ...) are ignored, as
clients send them freely.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from tinyllama.core.sampling import SamplingParams, sampling_params

MAX_STOPS = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limits: completions' `logprobs`, chat's `top_logprobs`
MAX_CHAT_LOGPROBS = 20
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class ApiError(Exception):
    """A request the server refuses: HTTP `status` and OpenAI's error fields."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Request:
    """A checked completions or chat request."""

    chat: bool
    model: str
    prompt: str | list[int] | None  # completions: text or token ids
    messages: list[dict[str, str]] | None  # chat: role + text content
    max_tokens: int | None  # None: up to the context (chat) or OpenAI's 16 (completions)
    params: SamplingParams
    seed: int | None
    stop: tuple[str, ...]
    logprobs: int | None  # None: off; k: each token's log-probability and k alternatives
    stream: bool
    include_usage: bool


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; NaN and Infinity, which Python's json would take, are refused."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(body.decode("utf-8"), parse_constant=refuse)
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 text (byte offset {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the request body must be a JSON object, got a JSON {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _integer(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise ApiError(400, f"'{name}' must be a whole number, got {json.dumps(value)[:80]}", name)
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ApiError(400, f"'{name}' must be {bound}, got {value}", name)
    return value


def _flag(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false, got {json.dumps(value)[:80]}", name)
    return value


def _unsupported(body: dict) -> None:
    """Refuse what would change the answer's meaning in ways this server does not implement."""
    if _integer(body, "n", 1) not in (None, 1):
        raise ApiError(400, "'n' must be 1: one choice per request (send several requests)", "n")
    if _integer(body, "best_of", 1) not in (None, 1):
        raise ApiError(400, "'best_of' must be 1", "best_of")
    if _flag(body, "echo"):
        raise ApiError(400, "'echo' is not supported; the prompt is the text you sent", "echo")
    if body.get("suffix") not in (None, ""):
        raise ApiError(400, "'suffix' (insertion) is not supported", "suffix")
    if body.get("logit_bias"):
        raise ApiError(400, "'logit_bias' is not supported", "logit_bias")
    if body.get("tools") or body.get("functions"):
        raise ApiError(400, "tool and function calling is not supported by this model server", "tools")
    for name in ("presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value not in (None, 0, 0.0) or isinstance(value, bool):
            raise ApiError(400, f"'{name}' is not supported (only 0); use 'repetition_penalty' (1 = off)", name)
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise ApiError(400, '\'response_format\' other than {"type": "text"} is not supported', "response_format")


def _sampling(body: dict) -> tuple[SamplingParams, int | None]:
    names = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}  # OpenAI's defaults
    values = {name: default if body.get(name) is None else body[name] for name, default in names.items()}
    for name, value in values.items():
        if isinstance(value, str):  # sampling_params reads text as numbers (a command line); JSON must say numbers
            raise ApiError(400, f"'{name}' must be a number, got a string", name)
    try:
        params = sampling_params(values)
    except ValueError as exc:
        name = next((n for n in names if str(exc).startswith(n)), None)
        raise ApiError(400, str(exc), name) from None
    return params, _integer(body, "seed", 0, 2**64 - 1)


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"'stop' takes at most {MAX_STOPS} strings of {MAX_STOP_CHARS} characters", "stop")
    return tuple(s for s in stops if s)


def _model(body: dict, served: str) -> str:
    model = body.get("model")
    if model is None:
        return served
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", "model")
    if model != served:
        raise ApiError(
            404, f"the model '{model[:100]}' does not exist; this server serves '{served}'", "model", "model_not_found"
        )
    return model


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    return stream, _flag(options, "include_usage")


def _max_tokens(body: dict) -> int | None:
    names = [name for name in ("max_completion_tokens", "max_tokens") if body.get(name) is not None]
    return _integer(body, names[0], 1) if names else None


def completion_request(body: dict[str, Any], served: str) -> Request:
    """POST /v1/completions: `prompt` is text or token ids (a list of one of them is taken too)."""
    _unsupported(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise ApiError(400, "'prompt' must be a string or a non-empty list of token ids (one prompt)", "prompt")
    elif not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string or a list of token ids (one prompt per request)", "prompt")
    logprobs = _integer(body, "logprobs", 0, MAX_COMPLETION_LOGPROBS)
    params, seed = _sampling(body)
    stream, usage = _stream(body)
    model = _model(body, served)
    return Request(False, model, prompt, None, _max_tokens(body), params, seed, _stop(body), logprobs, stream, usage)


def chat_request(body: dict[str, Any], served: str) -> Request:
    """POST /v1/chat/completions: `messages` with roles and text content (a list of text parts is joined)."""
    _unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    checked = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"{where} needs a 'role': one of {', '.join(ROLES)}", where)
        checked.append({"role": ROLES[message["role"]], "content": _content(message.get("content"), where)})
    top = _integer(body, "top_logprobs", 0, MAX_CHAT_LOGPROBS)
    logprobs = (top or 0) if _flag(body, "logprobs") else None
    if top is not None and logprobs is None:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    params, seed = _sampling(body)
    stream, usage = _stream(body)
    model = _model(body, served)
    return Request(True, model, None, checked, _max_tokens(body), params, seed, _stop(body), logprobs, stream, usage)


def _content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}: only text content parts ({{type: text, text}}) are supported", where)
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where}: 'content' must be a string or a list of text parts", where)
