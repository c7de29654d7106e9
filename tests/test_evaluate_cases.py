"""Case files (format, errors that name line and field), continuation tokens, batched scoring, bad input."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_MODELS, random_weights, write_word_tokenizer

from tinyllama import evaluate_checkpoints as ev
from tinyllama.core.cases import Case, CaseError, case_tokens, load_cases
from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.core.cli import run_cli


def write(tmp_path, text):
    path = tmp_path / "cases.yaml"
    path.write_text(text)
    return path


def test_case_file_fields(tmp_path):
    cases = load_cases(
        write(
            tmp_path,
            "# a comment\n"
            "- prompt: Abraham Lincoln was born in\n"
            "  expect: 1809\n"
            "  name: lincoln\n"
            "  tags: [history, corpus]\n"
            "  source: Abraham Lincoln (built-in corpus)\n"
            "- {prompt: 'Hello', expect: ', world'}\n",
        )
    )
    assert cases[0] == Case("lincoln", "Abraham Lincoln was born in", "1809", ("history", "corpus"), cases[0].source)
    assert cases[0].source.startswith("Abraham") and cases[0].joiner == " "
    assert cases[1].name == "case2" and cases[1].joiner == ""  # punctuation attaches to the prompt


@pytest.mark.parametrize(
    "text, message",
    [
        ("- prompt: a\n  expect: b\n- prompt: c\n  name: x\n", "cases.yaml:3: case 2: missing field 'expect'"),
        (
            "- prompt: a\n  expect: b\n  expcet: c\n",
            "cases.yaml:3: case 1: unknown field 'expcet' (did you mean 'expect'?)",
        ),
        ("- prompt: a\n  expect: ''\n", "cases.yaml:2: case 1: field 'expect' is empty"),
        ("- prompt: [a, b]\n  expect: c\n", "cases.yaml:1: case 1: field 'prompt' must be a text value"),
        ("- prompt: a\n  expect: b\n  tags: {x: 1}\n", "cases.yaml:3: case 1: field 'tags' must be a text value"),
        (
            "- prompt: a\n  expect: b\n  name: n\n- prompt: c\n  expect: d\n  name: n\n",
            "cases.yaml:6: case 2: duplicate",
        ),
        ("- prompt: a\n  expect: [b\n", "cases.yaml:3: not valid YAML"),
        ("prompt: a\nexpect: b\n", "expected a YAML list of cases"),
        ("- just a string\n", "cases.yaml:1: case 1: expected a mapping"),
        ("", "expected a YAML list of cases"),
    ],
)
def test_malformed_case_files_name_line_and_field(tmp_path, text, message):
    with pytest.raises(CaseError) as info:
        load_cases(write(tmp_path, text))
    assert message in str(info.value)


def test_shipped_case_file_is_valid():
    cases = load_cases(ROOT / "cases" / "wiki_basics.yaml")
    assert len(cases) >= 30
    assert any(c.prompt == "The history of Dubai is" for c in cases)
    assert all(c.source for c in cases)  # every probe says where its fact comes from
    assert sum("corpus" in c.tags for c in cases) >= 20


def test_continuation_tokens_are_those_of_running_text():
    from tinyllama.data.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    prompt, cont = case_tokens(Case("c", "The capital of France is", "Paris"), tok.encode)
    assert prompt == tok.encode("The capital of France is") and cont == tok.encode(" Paris")
    _, cont = case_tokens(Case("c", "He said", ", then left"), tok.encode)
    assert tok.decode(cont) == ", then left"


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_batched_scores_equal_one_unpadded_pass_per_case(backend):
    """Right padding never leaks into real positions; ranks and log-probs match a direct computation."""
    cfg = TINY_MODELS["gqa6x3-untied-eps"]
    weights = random_weights(cfg)
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, cfg.vocab_size, n).tolist(), rng.integers(0, cfg.vocab_size, m).tolist()) for n, m in
             ((3, 1), (9, 4), (1, 2), (20, 3), (5, 5))]  # fmt: skip
    if backend == "mlx":
        from tinyllama.mlx_model.generate import as_backend
        from tinyllama.mlx_model.state import build_model

        model = build_model(cfg, weights)
        forward = lambda ids: np.array(model(mx.array([ids]))[0])  # noqa: E731
    else:
        from tinyllama.torch_model.generate import as_backend
        from tinyllama.torch_model.state import build_model

        model = build_model(cfg, weights).eval()
        forward = lambda ids: model(torch.tensor([ids]))[0].detach().numpy()  # noqa: E731
    scores = as_backend(model).score(pairs, batch_size=2)
    for (prompt, cont), (rank, logprobs) in zip(pairs, scores, strict=True):
        logits = forward(prompt + cont[:-1])[len(prompt) - 1 :].astype(np.float64)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        np.testing.assert_allclose(logprobs, logp[np.arange(len(cont)), cont], atol=1e-4)
        assert rank == 1 + int((logits[0] > logits[0, cont[0]]).sum())


@pytest.fixture
def ckpt(tmp_path):
    cfg = TINY_MODELS["gqa8x2-tied"]
    tok = write_word_tokenizer(tmp_path / "tok", cfg.vocab_size)
    save_checkpoint(tmp_path / "c" / "m.ckpt", random_weights(cfg), cfg, tokenizer_dir=tok)
    write(tmp_path, "- {prompt: w5 w6, expect: w7}\n")
    return tmp_path


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: ev.main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_one_line_and_exit_2(ckpt, capsys):
    cases = ["--cases", str(ckpt / "cases.yaml"), "--backend", "torch"]
    assert "no checkpoint matches" in run(["--checkpoints", str(ckpt / "none/*.ckpt"), *cases], capsys)
    assert "checkpoint not found" in run(["--checkpoints", str(ckpt / "gone.ckpt"), *cases], capsys)
    big = write_word_tokenizer(ckpt / "big", 300)
    message = run(["--checkpoints", str(ckpt / "c/*.ckpt"), "--tokenizer", str(big), *cases], capsys)
    assert "has 300 tokens" in message and "vocab_size 97" in message
    write(ckpt, "- prompt: w5\n  expect: w6\n- prompt: w7\n")
    message = run(["--checkpoints", str(ckpt / "c/*.ckpt"), *cases], capsys)
    assert "cases.yaml:3: case 2: missing field 'expect'" in message
    write(ckpt, "- prompt: w5\n  expect: w6\n")
    (ckpt / "c" / "m.ckpt" / "model.safetensors").write_bytes(b"\x00" * 64)
    assert "corrupt or truncated" in run(["--checkpoints", str(ckpt / "c/*.ckpt"), *cases], capsys)
    (ckpt / "c" / "m.ckpt" / "config.json").write_text("{")
    assert "config.json is not valid JSON" in run(["--checkpoints", str(ckpt / "c/*.ckpt"), *cases], capsys)


def test_a_case_that_cannot_be_scored_is_reported_not_a_crash(ckpt, capsys):
    """An `expect` longer than the model's context (128 tokens here) is a row of its own, left out of the rates."""
    long = " ".join(f"w{5 + i % 80}" for i in range(200))
    write(ckpt, f"- {{name: fits, prompt: w5 w6, expect: w7}}\n- {{name: too-long, prompt: w5, expect: '{long}'}}\n")
    out = ckpt / "r.json"
    records = ev.main(["--checkpoints", str(ckpt / "c/m.ckpt"), "--cases", str(ckpt / "cases.yaml"),
                       "--backend", "torch", "--out", str(out), "--val-tokens", "-1"])  # fmt: skip
    err = capsys.readouterr().err
    assert "case 'too-long' cannot be scored (expect is 200 tokens, the context only 128)" in err
    cases = {c["name"]: c for c in json.loads(out.read_text())[0]["cases"]}
    assert cases["too-long"]["rank"] is None and cases["too-long"]["hit"] is False and "error" in cases["too-long"]
    assert cases["fits"]["rank"] >= 1 and "error" not in cases["fits"]
    assert records[0]["top1"] == float(cases["fits"]["rank"] == 1)  # over the one case that could be scored
