"""infer.py end to end: any Llama HF directory, both backends, streaming, batches, the prompt loop, bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, TINY_MODELS, random_weights, write_word_tokenizer

from tinyllama import infer
from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.core.cli import run_cli

PROMPT = "w5 w17 w3 w42 w8"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A directory written by transformers itself (not by us), with a word-level tokenizer beside it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("hf") / "llama"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=1,
    )  # fmt: skip
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 2:
                p.mul_(6.0)
    hf.save_pretrained(path)
    write_word_tokenizer(path, 96)
    with torch.no_grad():
        ids = torch.tensor([[5, 17, 3, 42, 8]])
        ref = hf.generate(ids, max_new_tokens=12, do_sample=False)[0, 5:].tolist()
    return path, ref


def run(argv, capsys, stdin: str | None = None, monkeypatch=None):
    """main(argv) the way the script runs it: (exit code, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    try:
        run_cli(lambda: infer.main(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_transformers_directory_greedy_matches_hf_generate(hf_dir, backend, capsys):
    path, ref = hf_dir
    code, out, err = run(
        ["--ckpt", str(path), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "12", "--backend", backend],
        capsys,
    )
    assert code == 0, err
    expected = ref[: ref.index(1)] if 1 in ref else ref  # transformers keeps EOS (id 1); we stop before it
    assert out == PROMPT + "".join(f" w{i}" if i > 1 else " <unk>" for i in expected) + "\n"
    assert "tok/s" in err and "peak memory" in err and backend in err


def test_backends_print_the_same_text_and_sampling_is_seeded(hf_dir, capsys):
    path, _ = hf_dir
    outs = {}
    for backend in ("mlx", "torch"):
        for seed in ("1", "2"):
            argv = ["--ckpt", str(path), "--prompt", PROMPT, "--backend", backend, "--seed", seed, "--top-k", "20"]
            code, outs[backend, seed], err = run([*argv, "--temperature", "1.0", "--max-new-tokens", "20"], capsys)
            assert code == 0, err
    assert outs["mlx", "1"] == outs["torch", "1"]
    assert outs["mlx", "2"] == outs["torch", "2"]
    assert outs["torch", "1"] != outs["torch", "2"]


def test_several_prompts_come_back_in_order(hf_dir, capsys, tmp_path):
    path, _ = hf_dir
    prompts = ["w5 w6", "w9 w10 w11", "w7 w8", PROMPT]
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join(prompts[1:]) + "\n\n")
    argv = ["--ckpt", str(path), "--prompt", prompts[0], "--prompt-file", str(file), "--temperature", "0"]
    code, out, err = run([*argv, "--max-new-tokens", "6", "--backend", "torch"], capsys)
    assert code == 0, err
    blocks = out.strip("\n").split("\n\n")
    assert [b.split()[: len(p.split())] for b, p in zip(blocks, prompts, strict=True)] == [p.split() for p in prompts]
    for prompt, block in zip(prompts, blocks, strict=True):  # each equals the prompt run alone
        _, alone, _ = run([*argv[:2], "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "6"], capsys)
        assert alone.strip("\n") == block


def test_interactive_loop_reads_lines_until_an_empty_one(hf_dir, capsys, monkeypatch):
    path, _ = hf_dir
    argv = ["--ckpt", str(path), "--temperature", "0", "--max-new-tokens", "4", "--backend", "mlx"]
    code, out, err = run(argv, capsys, stdin="w5 w6\nw7\n\nw9\n", monkeypatch=monkeypatch)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("w5 w6 ") and lines[1].startswith("w7 ")
    assert err.count("peak memory") == 2


def test_prompt_longer_than_the_context_is_trimmed_with_a_warning(hf_dir, capsys):
    path, _ = hf_dir
    long_prompt = " ".join(f"w{2 + i % 90}" for i in range(80))  # max_position_embeddings is 64
    code, out, err = run(["--ckpt", str(path), "--prompt", long_prompt, "--max-new-tokens", "10"], capsys)
    assert code == 0, err
    assert "warning: prompt has 80 tokens; keeping the last 54" in err


@pytest.fixture
def our_ckpt(tmp_path):
    cfg = TINY_MODELS["gqa8x2-tied"]
    tok = write_word_tokenizer(tmp_path / "tok", cfg.vocab_size)
    return save_checkpoint(tmp_path / "m.ckpt", random_weights(cfg), cfg, tokenizer_dir=tok, eos_token_id=1)


NO_TEMPLATE = "note: the tokenizer has no chat template; using the default (<|user|> ... <|assistant|>)\n"


def one_error_line(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_input_is_one_line_and_exit_2(our_ckpt, tmp_path, capsys):
    base = ["--prompt", "w5", "--backend", "torch"]
    one_error_line(*run(["--ckpt", str(our_ckpt), "--prompt-file", "missing.txt"], capsys)[::2], "prompt file")
    one_error_line(*run(["--ckpt", str(our_ckpt), "--top-p", "0", "--prompt", "w5"], capsys)[::2], "top_p")
    one_error_line(*run(["--ckpt", str(tmp_path / "nope.ckpt"), *base], capsys)[::2], "checkpoint not found")

    big = write_word_tokenizer(tmp_path / "big", TINY_MODELS["gqa8x2-tied"].vocab_size + 20)
    code, _, err = run(["--ckpt", str(our_ckpt), "--tokenizer", str(big), *base], capsys)
    one_error_line(code, err, "has 117 tokens", "vocab_size 97")

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (our_ckpt / name).unlink()
    one_error_line(*run(["--ckpt", str(our_ckpt), *base], capsys)[::2], "has no tokenizer files", "--tokenizer")

    weights = our_ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    good = str(tmp_path / "tok")
    one_error_line(*run(["--ckpt", str(our_ckpt), "--tokenizer", good, *base], capsys)[::2], "corrupt or truncated")

    (our_ckpt / "config.json").write_text("{not json")
    one_error_line(*run(["--ckpt", str(our_ckpt), *base], capsys)[::2], "config.json is not valid JSON")


def test_text_that_is_not_utf8_is_one_line_wherever_it_comes_from(our_ckpt, tmp_path, capsys, monkeypatch):
    """Under a C locale (and always for arguments) Python decodes stdin and argv with surrogateescape: bytes that
    are not UTF-8 arrive as lone surrogates, which the tokenizer refused with a TypeError traceback."""
    base = ["--ckpt", str(our_ckpt), "--backend", "torch", "--max-new-tokens", "2"]
    binary = "\udc89PNG\udcff"  # b"\x89PNG\xff" as surrogateescape decodes it
    code, _, err = run([*base, "--prompt", "w5", "--prompt", binary], capsys)
    one_error_line(code, err, "--prompt 2 is not UTF-8 text (byte offset 0)")
    for argv, where in ((["--prompt", "-"], "standard input"), ([], "standard input"), (["--chat"], "line 1")):
        monkeypatch.setattr(sys, "stdin", io.StringIO(binary + "\n"))
        code, _, err = run([*base, *argv], capsys)
        one_error_line(code, err.replace(NO_TEMPLATE, ""), where, "is not UTF-8 text")
    code, _, err = run([*base, "--chat", "-p", "w5", "--system-prompt", "w5 " + binary], capsys)
    one_error_line(code, err, "--system-prompt is not UTF-8 text (byte offset 3)")
    (tmp_path / "prompts.txt").write_bytes(b"w5\n\x89PNG\n")
    code, _, err = run([*base, "--prompt-file", str(tmp_path / "prompts.txt")], capsys)
    one_error_line(code, err, f"prompt file {tmp_path / 'prompts.txt'} is not UTF-8 text (byte offset 3: 0x89)")


@pytest.mark.slow
def test_binary_bytes_piped_into_chat_are_one_line(our_ckpt):
    """The reviewer's case, for real: `printf '\\x89PNG\\xff' | infer.py --chat` in a C locale."""
    cmd = [sys.executable, str(ROOT / "infer.py"), "--ckpt", str(our_ckpt), "--chat", "--backend", "torch"]
    env = dict(os.environ, OMP_NUM_THREADS="1", LC_ALL="C", PYTHONIOENCODING="")
    done = subprocess.run(cmd, input=b"\x89PNG\xff\n", capture_output=True, env=env, timeout=120)
    err = done.stderr.decode()
    assert done.returncode == 2 and "Traceback" not in err, err
    assert (
        err.strip().splitlines()[-1]
        == "error: standard input line 1 is not UTF-8 text (byte offset 0); convert it to UTF-8"
    )


@pytest.mark.slow
def test_script_runs_as_the_readme_says(our_ckpt, tmp_path):
    """The real command line: streams text, stats on stderr; a broken checkpoint is one line, no traceback."""
    cmd = [sys.executable, str(ROOT / "infer.py"), "--ckpt", str(our_ckpt), "--prompt", "w5 w6", "--backend", "torch"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [*cmd, "--temperature", "0", "--max-new-tokens", "5"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("w5 w6 ") and "tok/s" in done.stderr
    assert json.loads((our_ckpt / "config.json").read_text())["eos_token_id"] == 1
    (our_ckpt / "config.json").write_text('{"model_type": "llama"}')
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "config.json: 'num_attention_heads' is missing" in done.stderr
