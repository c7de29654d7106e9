"""The hostile-request matrix: every malformed, mistyped, oversized, unauthorised or unsupported request to
serve.py is an OpenAI-style JSON error with a 4xx status naming the problem, never a traceback; after all of
them the server still answers. Then the slow client (408), the full queue (503) and SIGTERM while a request
streams (it finishes, the server exits 0)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import signal
import socket
import threading
import time

import pytest
from helpers import TINY_MODELS, Server, word_checkpoint

CFG = dataclasses.replace(TINY_MODELS["gqa8x2-tied"], vocab_size=320, max_seq_len=256)
KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
C, CHAT = "/v1/completions", "/v1/chat/completions"
OK = {"model": "words.ckpt", "prompt": "w3 w4", "max_tokens": 2}
TALK = {"model": "words.ckpt", "messages": [{"role": "user", "content": "w3"}], "max_tokens": 2}


def with_(base: dict, **fields) -> bytes:
    return json.dumps({**base, **fields}).encode()


# (id, method, path, headers, body, status, what the error message must say)
CASES = [
    # ------------------------------------------------------------------------------------ who may ask
    ("no-key", "POST", C, {}, with_(OK), 401, "API key"),
    ("wrong-key", "POST", C, {"Authorization": "Bearer nope"}, with_(OK), 401, "API key"),
    ("key-not-bearer", "POST", C, {"Authorization": KEY}, with_(OK), 401, "API key"),
    ("models-no-key", "GET", "/v1/models", {}, b"", 401, "API key"),
    ("key-non-ascii", "POST", C, {"Authorization": "Bearer \u00e9"}, with_(OK), 401, "API key"),
    # ------------------------------------------------------------------------------------ the body
    ("not-json", "POST", C, AUTH, b"{not json", 400, "not valid JSON"),
    ("empty-body", "POST", C, AUTH, b"", 400, "not valid JSON"),
    ("json-array", "POST", C, AUTH, b"[1, 2]", 400, "must be a JSON object"),
    ("json-string", "POST", C, AUTH, b'"hello"', 400, "must be a JSON object"),
    ("nan-literal", "POST", C, AUTH, b'{"prompt": "w3", "temperature": NaN}', 400, "NaN is not valid JSON"),
    ("infinity-literal", "POST", C, AUTH, b'{"prompt": "w3", "max_tokens": Infinity}', 400, "not valid JSON"),
    ("overflowing-number", "POST", C, AUTH, b'{"prompt": "w3", "max_tokens": 1e400}', 400, "max_tokens"),
    ("overflowing-temperature", "POST", C, AUTH, b'{"prompt": "w3", "temperature": 1e400}', 400, "finite"),
    ("not-utf8", "POST", C, AUTH, b'{"prompt": "\xff\xfe"}', 400, "not UTF-8"),
    ("deep-nesting", "POST", C, AUTH, b"[" * 60_000, 400, "not valid JSON"),
    ("too-large", "POST", C, AUTH, with_(OK, prompt="w3 " * 30_000), 413, "over 65536 bytes"),
    ("length-lies", "POST", C, {**AUTH, "Content-Length": "999999999"}, b"{}", 413, "over 65536 bytes"),
    # ------------------------------------------------------------------------------------ the model
    ("unknown-model", "POST", C, AUTH, with_(OK, model="gpt-4"), 404, "does not exist"),
    ("model-not-string", "POST", C, AUTH, with_(OK, model=123), 400, "'model' must be a string"),
    ("unknown-model-card", "GET", "/v1/models/gpt-4", AUTH, b"", 404, "does not exist"),
    # ------------------------------------------------------------------------------------ prompts
    ("no-prompt", "POST", C, AUTH, b'{"model": "words.ckpt"}', 400, "'prompt'"),
    ("prompt-number", "POST", C, AUTH, with_(OK, prompt=42), 400, "'prompt'"),
    ("two-prompts", "POST", C, AUTH, with_(OK, prompt=["a", "b"]), 400, "'prompt'"),
    ("prompt-id-too-big", "POST", C, AUTH, with_(OK, prompt=[999_999]), 400, "outside"),
    ("prompt-id-negative", "POST", C, AUTH, with_(OK, prompt=[-1]), 400, "outside"),
    ("prompt-id-bool", "POST", C, AUTH, with_(OK, prompt=[True]), 400, "'prompt'"),
    ("prompt-ids-empty", "POST", C, AUTH, with_(OK, prompt=[]), 400, "'prompt'"),
    ("prompt-over-context", "POST", C, AUTH, with_(OK, prompt="w3 " * 300), 400, "context"),
    ("no-messages", "POST", CHAT, AUTH, b'{"model": "words.ckpt"}', 400, "'messages'"),
    ("messages-empty", "POST", CHAT, AUTH, with_(TALK, messages=[]), 400, "'messages'"),
    ("messages-text", "POST", CHAT, AUTH, with_(TALK, messages="hi"), 400, "'messages'"),
    ("message-role", "POST", CHAT, AUTH, with_(TALK, messages=[{"role": "god", "content": "x"}]), 400, "role"),
    ("message-number", "POST", CHAT, AUTH, with_(TALK, messages=[{"role": "user", "content": 5}]), 400, "content"),
    (
        "message-image",
        "POST",
        CHAT,
        AUTH,
        with_(TALK, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "only text",
    ),
    (
        "chat-over-context",
        "POST",
        CHAT,
        AUTH,
        with_(TALK, messages=[{"role": "user", "content": "w3 " * 300}]),
        400,
        "context",
    ),  # fmt: skip
    # ------------------------------------------------------------------------------------ token limits
    ("max-tokens-negative", "POST", C, AUTH, with_(OK, max_tokens=-5), 400, ">= 1"),
    ("max-tokens-zero", "POST", C, AUTH, with_(OK, max_tokens=0), 400, ">= 1"),
    ("max-tokens-huge", "POST", C, AUTH, with_(OK, max_tokens=10**12), 400, "context"),
    ("max-tokens-float", "POST", C, AUTH, with_(OK, max_tokens=2.5), 400, "whole number"),
    ("max-tokens-text", "POST", C, AUTH, with_(OK, max_tokens="10"), 400, "whole number"),
    ("max-tokens-bool", "POST", C, AUTH, with_(OK, max_tokens=True), 400, "whole number"),
    ("max-completion-tokens", "POST", CHAT, AUTH, with_(TALK, max_completion_tokens=-1), 400, ">= 1"),
    # ------------------------------------------------------------------------------------ sampling
    ("temperature-text", "POST", C, AUTH, with_(OK, temperature="hot"), 400, "temperature"),
    ("temperature-negative", "POST", C, AUTH, with_(OK, temperature=-1), 400, "temperature"),
    ("temperature-list", "POST", C, AUTH, with_(OK, temperature=[1]), 400, "temperature"),
    ("top-p-zero", "POST", C, AUTH, with_(OK, top_p=0), 400, "top_p"),
    ("top-p-two", "POST", C, AUTH, with_(OK, top_p=2), 400, "top_p"),
    ("top-k-negative", "POST", C, AUTH, with_(OK, top_k=-1), 400, "top_k"),
    ("top-k-fraction", "POST", C, AUTH, with_(OK, top_k=1.5), 400, "top_k"),
    ("min-p-one", "POST", C, AUTH, with_(OK, min_p=1), 400, "min_p"),
    ("penalty-zero", "POST", C, AUTH, with_(OK, repetition_penalty=0), 400, "repetition_penalty"),
    ("seed-negative", "POST", C, AUTH, with_(OK, seed=-1), 400, "'seed'"),
    ("seed-text", "POST", C, AUTH, with_(OK, seed="x"), 400, "'seed'"),
    # ------------------------------------------------------------------------------------ stops, logprobs
    ("stop-number", "POST", C, AUTH, with_(OK, stop=5), 400, "'stop'"),
    ("stop-five", "POST", C, AUTH, with_(OK, stop=["a", "b", "c", "d", "e"]), 400, "at most 4"),
    ("stop-long", "POST", C, AUTH, with_(OK, stop="x" * 1000), 400, "'stop'"),
    ("logprobs-six", "POST", C, AUTH, with_(OK, logprobs=6), 400, "'logprobs'"),
    ("top-logprobs-21", "POST", CHAT, AUTH, with_(TALK, logprobs=True, top_logprobs=21), 400, "'top_logprobs'"),
    ("top-logprobs-alone", "POST", CHAT, AUTH, with_(TALK, top_logprobs=2), 400, "needs 'logprobs'"),
    # ------------------------------------------------------------------------------------ unsupported
    ("n-two", "POST", C, AUTH, with_(OK, n=2), 400, "'n' must be 1"),
    ("echo", "POST", C, AUTH, with_(OK, echo=True), 400, "'echo'"),
    ("tools", "POST", CHAT, AUTH, with_(TALK, tools=[{"type": "function"}]), 400, "tool"),
    ("presence-penalty", "POST", C, AUTH, with_(OK, presence_penalty=1), 400, "presence_penalty"),
    ("json-mode", "POST", CHAT, AUTH, with_(TALK, response_format={"type": "json_object"}), 400, "response_format"),
    ("stream-yes", "POST", C, AUTH, with_(OK, stream="yes"), 400, "'stream'"),
    ("stream-options", "POST", C, AUTH, with_(OK, stream=True, stream_options=[1]), 400, "stream_options"),
    # ------------------------------------------------------------------------------------ routes
    ("get-completions", "GET", C, AUTH, b"", 405, "method not allowed"),
    ("put-chat", "PUT", CHAT, AUTH, with_(TALK), 405, "method not allowed"),
    ("no-route", "GET", "/v1/engines", AUTH, b"", 404, "no such route"),
    ("path-traversal", "GET", "/../../etc/passwd", AUTH, b"", 404, "no such route"),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return word_checkpoint(tmp_path_factory.mktemp("hostile"), CFG)


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    args = ["--model", ckpt, "--backend", "torch", "--max-body", "65536", "--client-timeout", "2"]
    running = Server(*args, "--max-batch", "2", "--max-queue", "2", log=log, env={"TINYLLAMA_API_KEY": KEY})
    yield running
    assert running.stop() == 0
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def call(server, method: str, path: str, headers: dict, body: bytes, timeout: float = 60):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        headers = {"Content-Type": "application/json", **headers}
        if "Content-Length" not in headers and (body or method == "POST"):
            headers["Content-Length"] = str(len(body))
        for name, value in headers.items():
            connection.putheader(name, value.encode("utf-8"))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_requests_are_openai_errors(server, case):
    _, method, path, headers, body, status, expected = case
    got, raw, _ = call(server, method, path, headers, body)
    error = json.loads(raw)["error"]
    assert got == status, raw
    assert expected in error["message"] and error["type"] in ("invalid_request_error", "server_error"), raw
    assert "Traceback" not in raw.decode()


def test_after_the_matrix_the_server_still_answers(server):
    status, raw, _ = call(server, "POST", C, AUTH, with_(OK, temperature=0))
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 2, raw
    status, raw, _ = call(server, "GET", "/health", {}, b"")  # no key needed
    assert status == 200 and json.loads(raw)["status"] == "ok"


def test_a_client_too_slow_to_send_its_body_is_cut_off(server):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = f"POST {C} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n"
        sock.sendall(head.encode() + b"{")  # 1 of the 100 bytes promised
        start, answer = time.monotonic(), b""
        while b"}" not in answer:
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer
    assert 1.5 < time.monotonic() - start < 20


def test_a_full_queue_answers_503_and_the_server_recovers(server):
    """Two rows, two queued: of eight long requests sent at once, the extra ones are refused at once."""
    results: list[tuple[int, dict]] = []

    def ask() -> None:
        status, raw, headers = call(server, "POST", C, AUTH, with_(OK, max_tokens=250, temperature=1.0))
        results.append((status, headers))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    statuses = sorted(status for status, _ in results)
    assert len(statuses) == 8 and statuses.count(200) >= 2 and 503 in statuses, statuses
    assert all(h.get("retry-after") == "1" for s, h in results if s == 503)
    assert call(server, "POST", C, AUTH, with_(OK))[0] == 200


@pytest.mark.slow
def test_sigterm_lets_a_running_request_finish_then_exits_cleanly(ckpt, tmp_path):
    running = Server("--model", ckpt, "--backend", "torch", log=tmp_path / "serve.log")
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    body = with_(OK, max_tokens=250, temperature=1.0, stream=True)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"POST {C} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = b""
        while b"data: " not in answer:
            answer += sock.recv(65536)
        running.proc.send_signal(signal.SIGTERM)
        while b"data: [DONE]" not in answer:
            piece = sock.recv(65536)
            assert piece, answer[-500:]
            answer += piece
    assert running.proc.wait(60) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "SIGTERM: finishing running requests" in log and "stopped" in log and "Traceback" not in log
