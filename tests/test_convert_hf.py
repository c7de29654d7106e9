"""HF directory import (written by transformers itself), clean HF release export, MLX-quantized export, inspect."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import GGUF_MODELS, greedy_mlx, make_checkpoint, run_convert, write_bpe_tokenizer

from tinyllama.convert.hf_export import export_hf
from tinyllama.convert.mlx_export import export_mlx
from tinyllama.core.architecture import count_parameters
from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.core.dtypes import numpy_dtype
from tinyllama.core.model_files import load_weights
from tinyllama.mlx_model.state import load_model as load_mlx
from tinyllama.torch_model.state import load_model as load_torch

TOKENS = np.random.default_rng(1).integers(0, 290, size=(2, 17))


def _hf_model(directory, dtype, tie: bool, **overrides):
    """A random LlamaForCausalLM saved by transformers, sharded into many ~50 KB files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
        initializer_range=0.1,
        rope_parameters={"rope_type": "default", "rope_theta": 5e5},
        bos_token_id=0,
        eos_token_id=0,
        **overrides,
    )
    model = LlamaForCausalLM(config).to(dtype).eval()
    model.save_pretrained(directory, max_shard_size="50KB")
    write_bpe_tokenizer(directory)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tie", [(torch.float32, False), (torch.bfloat16, True)])
def test_import_of_sharded_transformers_directory(tmp_path, dtype, tie):
    hf = _hf_model(tmp_path / "hf", dtype, tie)
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 3
    result = run_convert("import", tmp_path / "hf", tmp_path / "m.ckpt")
    assert result.returncode == 0, result.stderr

    weights = load_weights(tmp_path / "m.ckpt")
    for name, value in hf.state_dict().items():
        if tie and name == "lm_head.weight":
            continue
        expected = value.float().numpy()
        assert np.array_equal(weights[name].astype(np.float32), expected), name
    assert {v.dtype for v in weights.values()} == {
        numpy_dtype("bfloat16") if dtype == torch.bfloat16 else np.dtype(np.float32)
    }

    from transformers import LlamaForCausalLM

    # reloaded in float32 by transformers (a bf16 model cast with .float() keeps a bf16-rounded RoPE table)
    reference_model = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        reference = reference_model(torch.from_numpy(TOKENS), use_cache=False).logits.numpy()
    ours_torch, cfg = load_torch(tmp_path / "m.ckpt", dtype="float32")
    ours_mlx, _ = load_mlx(tmp_path / "m.ckpt", dtype="float32")
    assert cfg.resolved_head_dim == 32 and cfg.rope_theta == 5e5 and cfg.tie_embeddings == tie
    assert np.abs(reference).max() > 0.5
    with torch.no_grad():
        assert np.abs(ours_torch(torch.from_numpy(TOKENS)).numpy() - reference).max() < 1e-4
    assert np.abs(np.array(ours_mlx(mx.array(TOKENS))) - reference).max() < 1e-4
    assert (tmp_path / "m.ckpt" / "tokenizer.json").is_file()
    state = json.loads((tmp_path / "m.ckpt" / "trainer_state.json").read_text())
    assert state["step"] == 0 and state["imported_from"].endswith("hf")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint that looks trained: optimizer moments, trainer state, bf16-able weights."""
    cfg = GGUF_MODELS["gqa4x2-untied-headdim"]
    tmp = tmp_path_factory.mktemp("trained")
    ckpt = make_checkpoint(tmp, cfg)
    weights = load_weights(ckpt)
    moments = {f"{k}.{m}": np.zeros_like(v) for k, v in weights.items() for m in ("exp_avg", "exp_avg_sq")}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    return save_checkpoint(
        ckpt,
        weights,
        cfg,
        optimizer=moments,
        trainer_state=state,
        tokenizer_dir=tmp / "tok-m.ckpt",
        bos_token_id=0,
        eos_token_id=0,
    )


@pytest.mark.parametrize("dtype,torch_dtype,tol", [("bf16", torch.bfloat16, 0.05), ("fp16", torch.float16, 8e-3)])
def test_export_hf_is_a_clean_release(trained, tmp_path, dtype, torch_dtype, tol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_hf(trained, tmp_path / "release", dtype=dtype)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == str(torch_dtype).removeprefix("torch.")
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 5e5
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert next(model.parameters()).dtype == torch_dtype
    source, _ = load_torch(trained)
    with torch.no_grad():
        expected = source(torch.from_numpy(TOKENS)).numpy()
        got = model.float()(torch.from_numpy(TOKENS), use_cache=False).logits.numpy()
    assert np.abs(got - expected).max() < tol
    assert (
        AutoTokenizer.from_pretrained(out)("hello world").input_ids
        == AutoTokenizer.from_pretrained(trained)("hello world").input_ids
    )


def test_export_mlx_8bit_generates_like_the_unquantized_model(trained, tmp_path):
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    out = export_mlx(trained, tmp_path / "q8", q_bits=8, q_group_size=64)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        names = set(f.keys())
        assert f.get_slice("model.layers.0.mlp.up_proj.weight").get_dtype() == "U32"
    assert {"model.embed_tokens.scales", "model.layers.1.self_attn.q_proj.biases", "lm_head.scales"} <= names

    model, _ = load(str(out))
    prompt = [5, 17, 42, 99, 3]
    ours, _ = load_mlx(trained)
    expected = greedy_mlx(ours, prompt, 12)
    cache, got = make_prompt_cache(model), []
    logits = model(mx.array([prompt]), cache=cache)
    for _ in range(12):
        got.append(int(mx.argmax(logits[0, -1]).item()))
        logits = model(mx.array([[got[-1]]]), cache=cache)
    assert got == expected  # measured: max |logit diff| 0.05 of 3.2 at 8 bits; 4 bits diverges after 3 tokens
    assert np.abs(np.array(model(mx.array([prompt]))) - np.array(ours(mx.array([prompt])))).max() < 0.1


@pytest.mark.slow
def test_inspect_reports_training_progress(trained):
    result = run_convert("inspect", trained)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for expected in (
        "parameters",
        "float32",
        "step           120",
        "245.8k (245,760)",
        "backend        mlx",
        "loss           3.25",
        "optimizer      yes",
        "kB",
    ):
        assert expected in text, (expected, text)
    info = json.loads(run_convert("inspect", trained, "--json").stdout)
    assert info["parameters"] == count_parameters(GGUF_MODELS["gqa4x2-untied-headdim"])
    assert info["config"]["head_dim"] == 32 and info["size_bytes"] > info["weights_bytes"] > 0


def test_every_command_explains_itself():
    for command in ([], ["import"], ["export-gguf"], ["export-mlx"], ["export-hf"], ["inspect"]):
        result = run_convert(*command, "--help")
        assert result.returncode == 0 and "usage: python -m convert" in result.stdout
        assert len(result.stdout.split()) > 30  # a description, not a bare usage line
