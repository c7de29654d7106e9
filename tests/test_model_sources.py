"""infer.py and evaluate_checkpoints.py on what users have: an MLX-quantized directory (export-mlx,
mlx-community), a .gguf file, a Hugging Face Hub id (tested through a local Hub cache, offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from helpers import ROOT, make_checkpoint, run_infer

from tinyllama.core.config import ModelConfig

CFG = ModelConfig(vocab_size=300, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=64)
PROMPT = [5, 17, 42, 99, 3, 8]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("sources"), CFG, seed=3)


GREEDY = ["-p", "hello world", "--temp", "0", "--max-tokens", "8"]


@pytest.fixture(scope="module")
def quantized(ckpt, tmp_path_factory):
    from tinyllama.convert.mlx_export import export_mlx

    return export_mlx(ckpt, tmp_path_factory.mktemp("q") / "q4", q_bits=4, q_group_size=32)


def test_an_mlx_quantized_directory_loads_as_mlx_lm_loads_it(quantized):
    """Same layers quantized, same tensors: the logits equal mlx_lm's own model of that directory."""
    from mlx_lm import load

    from tinyllama.mlx_model.state import load_model

    reference, _ = load(str(quantized))
    ours, _ = load_model(quantized)
    assert type(ours.model.layers[0].self_attn.q_proj).__name__ == "QuantizedLinear"
    tokens = mx.array([PROMPT])
    expected, got = np.array(reference(tokens)), np.array(ours(tokens))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_infer_runs_an_mlx_quantized_directory_on_mlx_and_auto_picks_mlx(quantized, capsys, monkeypatch):
    code, forced, err = run_infer(["--model", str(quantized), "--backend", "mlx", *GREEDY], capsys, monkeypatch)
    assert code == 0, err
    code, auto, err = run_infer(["--model", str(quantized), *GREEDY], capsys, monkeypatch)
    assert code == 0, err
    assert "[mlx" in err and auto == forced and len(auto) > len("hello world\n")


def test_torch_refuses_an_mlx_quantized_directory_in_one_line(quantized, capsys, monkeypatch):
    code, _, err = run_infer(["--model", str(quantized), "--backend", "torch", *GREEDY], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "MLX-quantized (4-bit, groups of 32)" in err and "--backend mlx" in err


@pytest.mark.slow
def test_a_gguf_file_runs_dequantized_like_its_checkpoint_and_leaves_nothing_behind(ckpt, tmp_path):
    from tinyllama.convert.gguf_export import export_gguf

    gguf = export_gguf(ckpt, tmp_path / "model.gguf", dtype="f32")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))

    def generate(model) -> subprocess.CompletedProcess:
        argv = [sys.executable, "infer.py", "--model", str(model), "--backend", "torch", *GREEDY]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    from_gguf, from_ckpt = generate(gguf), generate(ckpt)
    assert from_gguf.returncode == 0, from_gguf.stderr
    assert from_gguf.stdout == from_ckpt.stdout and "python -m convert import" in from_gguf.stderr
    assert list(scratch.iterdir()) == []  # the temporary checkpoint is removed at exit


def hub_cache(home, repo_id: str, model_dir) -> None:
    """The layout huggingface_hub keeps downloads in: models--org--name/snapshots/<commit>/ + refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        if file.is_file() and (file.suffix in (".json", ".safetensors")) and not file.name.startswith("optimizer"):
            shutil.copy(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.slow
def test_a_hub_id_loads_from_the_hub_cache_and_an_unknown_one_is_one_line(ckpt, tmp_path):
    home = tmp_path / "hf"
    hub_cache(home, "acme/tiny-llama", ckpt)
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    infer_py = str(ROOT / "infer.py")
    from_hub = subprocess.run(
        [sys.executable, infer_py, "--model", "acme/tiny-llama", "--backend", "torch", *GREEDY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    from_dir = subprocess.run(
        [sys.executable, infer_py, "--model", str(ckpt), "--backend", "torch", *GREEDY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert from_hub.returncode == 0, from_hub.stderr
    assert from_hub.stdout == from_dir.stdout
    unknown = subprocess.run(
        [sys.executable, infer_py, "--model", "acme/no-such-model", *GREEDY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    assert "'acme/no-such-model' is neither a local path nor a model on the Hugging Face Hub" in unknown.stderr


def test_evaluate_scores_a_gguf_file(ckpt, tmp_path, capsys):
    from tinyllama import evaluate_checkpoints
    from tinyllama.convert.gguf_export import export_gguf

    gguf = export_gguf(ckpt, tmp_path / "model.gguf", dtype="f32")
    cases = tmp_path / "cases.yaml"
    cases.write_text(json.dumps([{"prompt": "hello", "expect": " world"}]))
    on_gguf = evaluate_checkpoints.main(["--model", str(gguf), "--cases", str(cases), "--backend", "torch"])
    on_ckpt = evaluate_checkpoints.main(["--model", str(ckpt), "--cases", str(cases), "--backend", "torch"])
    assert on_gguf[0]["cases"][0]["rank"] == on_ckpt[0]["cases"][0]["rank"] >= 1
    assert on_gguf[0]["cases"][0]["logprob"] == pytest.approx(on_ckpt[0]["cases"][0]["logprob"], abs=1e-4)
