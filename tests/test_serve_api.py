"""serve.py through the official `openai` client, on both backends, against a live server on a tiny checkpoint
whose tokens are whole words: completions and chat equal infer.py's greedy text, streamed chunks join to the
whole answer, stop strings cut exactly, log-probabilities and usage are reported, concurrent clients each get
their own answer, and a client that disconnects frees its row."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import urllib.request

import pytest
from helpers import TINY_MODELS, Server, run_infer, word_checkpoint

openai = pytest.importorskip("openai")

CFG = dataclasses.replace(TINY_MODELS["gqa8x2-tied"], vocab_size=320, max_seq_len=256)
PROMPT = "w5 w17 w42 w7"
MARGIN = 1e-3  # batched logits differ from a lone row's by float noise (< 1e-4, tests/test_serve_batch.py)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return word_checkpoint(tmp_path_factory.mktemp("serve"), CFG)


@pytest.fixture(scope="module", params=["torch", "mlx"])
def server(request, ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    running = Server("--model", ckpt, "--backend", request.param, "--max-batch", "8", log=log)
    running.backend = request.param
    yield running
    assert running.stop() == 0, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["words.ckpt"]
    health = json.loads(urllib.request.urlopen(server.url + "/health", timeout=30).read())
    assert health["status"] == "ok" and health["backend"].startswith(server.backend)


@pytest.mark.slow
def test_greedy_completion_and_chat_equal_infer(server, client, ckpt, capsys, monkeypatch):
    got = client.completions.create(model="words.ckpt", prompt=PROMPT, max_tokens=12, temperature=0)
    argv = ["--model", str(ckpt), "--backend", server.backend, "--temperature", "0", "--max-new-tokens", "12"]
    code, out, err = run_infer([*argv, "-p", PROMPT], capsys, monkeypatch)
    assert code == 0, err
    assert out == PROMPT + got.choices[0].text + "\n"
    assert got.usage.prompt_tokens == 4 and got.usage.completion_tokens == 12 and got.usage.total_tokens == 16
    assert got.choices[0].finish_reason == "length"

    messages = [{"role": "system", "content": "w9 w9"}, {"role": "user", "content": "w3 w4 w5"}]
    chat = client.chat.completions.create(model="words.ckpt", messages=messages, max_tokens=10, temperature=0)
    code, out, err = run_infer([*argv[:-1], "10", "--chat", "--system-prompt", "w9 w9", "-p", "w3 w4 w5"],
                               capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    assert out == chat.choices[0].message.content + "\n" and chat.choices[0].message.role == "assistant"


def test_streamed_chunks_join_to_the_whole_answer(client):
    for seed in (None, 3):
        options = dict(max_tokens=20, temperature=0 if seed is None else 0.9, seed=seed)
        whole = client.completions.create(model="words.ckpt", prompt=PROMPT, **options)
        chunks = list(client.completions.create(model="words.ckpt", prompt=PROMPT, stream=True,
                                                stream_options={"include_usage": True}, **options))  # fmt: skip
        assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
        assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    messages = [{"role": "user", "content": "w3 w4"}]
    whole = client.chat.completions.create(model="words.ckpt", messages=messages, max_tokens=15, temperature=0)
    chunks = list(client.chat.completions.create(model="words.ckpt", messages=messages, max_tokens=15, temperature=0,
                                                 stream=True))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_strings_cut_the_text_exactly(client):
    full = client.completions.create(model="words.ckpt", prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
    words = full.split()
    stop = " " + words[3]  # the fourth word with its space: the answer ends right before it
    cut = client.completions.create(model="words.ckpt", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop, "zz"])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="words.ckpt", prompt=PROMPT, max_tokens=12, temperature=0, stop=stop,
                                         stream=True)  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_logprobs_and_seeds(client):
    got = client.completions.create(model="words.ckpt", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    lp = got.choices[0].logprobs
    assert "".join(lp.tokens).replace(" ", "") == got.choices[0].text.replace(" ", "")
    assert all(
        len(top) == 3 and max(top.values()) == pytest.approx(chosen)
        for top, chosen in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )  # fmt: skip  (greedy: the chosen is the top)
    chat = client.chat.completions.create(model="words.ckpt", messages=[{"role": "user", "content": "w3"}],
                                          max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) >= 1 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    sampled = [client.completions.create(model="words.ckpt", prompt=PROMPT, max_tokens=15, temperature=1.0, seed=7)
               for _ in range(2)]  # fmt: skip
    assert sampled[0].choices[0].text == sampled[1].choices[0].text


def greedy_with_margins(client, prompt: str, n: int) -> tuple[str, bool]:
    """The greedy answer alone, and whether every step's top token led the next by MARGIN (then a batched run,
    whose logits differ by float noise, must pick the same tokens)."""
    got = client.completions.create(model="words.ckpt", prompt=prompt, max_tokens=n, temperature=0, logprobs=2)
    tops = [sorted(t.values(), reverse=True) for t in got.choices[0].logprobs.top_logprobs]
    return got.choices[0].text, all(len(t) < 2 or t[0] - t[1] > MARGIN for t in tops)


@pytest.mark.slow
def test_concurrent_clients_each_get_their_own_answer(server, client):
    prompts = [" ".join(f"w{(7 * i + 3 * j) % 300 + 2}" for j in range(2 + i)) for i in range(8)]
    alone = [greedy_with_margins(client, p, 24) for p in prompts]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        time.sleep(0.05 * i)  # they join a running batch at different steps
        stream = client.completions.create(model="words.ckpt", prompt=prompts[i], max_tokens=24, temperature=0,
                                           stream=True)  # fmt: skip
        results[i] = "".join(c.choices[0].text for c in stream)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(8))
    compared = [i for i, (_, clear) in enumerate(alone) if clear]
    assert len(compared) >= 4, alone  # random weights made sharp (helpers.random_weights) lead by a wide margin
    assert [results[i] for i in compared] == [alone[i][0] for i in compared]


def test_a_client_that_disconnects_frees_its_row(server, client):
    def health() -> dict:
        return json.loads(urllib.request.urlopen(server.url + "/health", timeout=30).read())

    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    before = health()["tokens"]
    body = json.dumps({"prompt": PROMPT, "max_tokens": 250, "temperature": 0.9, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        seen = b""
        while b"data: " not in seen:  # the answer has begun
            seen += sock.recv(4096)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and health()["running"]:
        time.sleep(0.01)
    after = health()
    assert after["running"] == 0 and after["queued"] == 0
    assert after["tokens"] - before < 250  # cut short: the row left the batch before its token limit
    assert client.completions.create(model="words.ckpt", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
