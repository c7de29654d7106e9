"""Our MLX model = our torch model = transformers' LlamaForCausalLM = mlx_lm, on random weights."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import random_weights, tokens_for, write_word_tokenizer

from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.mlx_model.state import build_model as build_mlx
from tinyllama.mlx_model.state import load_model as load_mlx
from tinyllama.torch_model.state import build_model as build_torch
from tinyllama.torch_model.state import load_model as load_torch

TOL = 1e-4


@pytest.mark.parametrize("length", [1, 7, 64])
def test_mlx_equals_torch_equals_transformers(tiny_model_cfg, length, tmp_path):
    from transformers import LlamaForCausalLM

    cfg = tiny_model_cfg
    weights = random_weights(cfg)
    tokens = tokens_for(cfg, 2, length)
    ckpt = save_checkpoint(tmp_path / "m.ckpt", weights, cfg)

    ours_torch = build_torch(cfg, weights)(torch.from_numpy(tokens)).detach().numpy()
    ours_mlx = np.array(build_mlx(cfg, weights)(mx.array(tokens)))
    hf = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = hf(torch.from_numpy(tokens), use_cache=False).logits.numpy()

    assert reference.shape == (2, length, cfg.vocab_size)
    assert np.abs(reference).max() > 0.1  # logits carry signal, not a degenerate all-zero pass
    assert np.abs(ours_torch - reference).max() < TOL
    assert np.abs(ours_mlx - reference).max() < TOL


def test_checkpoint_loads_in_mlx_lm_with_same_logits(tiny_model_cfg, tmp_path):
    from mlx_lm import load as mlx_lm_load

    cfg = tiny_model_cfg
    weights = random_weights(cfg, seed=3)
    tokenizer_dir = write_word_tokenizer(tmp_path / "tok", cfg.vocab_size)
    ckpt = save_checkpoint(tmp_path / "m.ckpt", weights, cfg, tokenizer_dir=tokenizer_dir, eos_token_id=1)

    model, tokenizer = mlx_lm_load(str(ckpt))
    assert tokenizer.encode("w5 w7", add_special_tokens=False) == [5, 7]
    tokens = tokens_for(cfg, 1, 33, seed=4)
    reference = np.array(model(mx.array(tokens)))
    ours, _ = load_mlx(ckpt)
    assert np.abs(np.array(ours(mx.array(tokens))) - reference).max() < TOL
    ours_torch, _ = load_torch(ckpt)
    assert np.abs(ours_torch(torch.from_numpy(tokens)).detach().numpy() - reference).max() < TOL


def test_transformers_written_directory_loads_in_both_backends(tmp_path):
    """The reverse direction: a directory written by transformers itself (rope_parameters only)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_cfg = LlamaConfig(
        vocab_size=89,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        max_position_embeddings=64,
    )
    hf = LlamaForCausalLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    tokens = tokens_for(hf_cfg, 2, 20)
    with torch.no_grad():
        reference = hf(torch.from_numpy(tokens), use_cache=False).logits.numpy()

    mlx_model, cfg = load_mlx(tmp_path / "hf")
    torch_model, _ = load_torch(tmp_path / "hf")
    assert cfg.rope_theta == 500000.0 and not cfg.tie_embeddings
    assert np.abs(np.array(mlx_model(mx.array(tokens))) - reference).max() < TOL
    assert np.abs(torch_model(torch.from_numpy(tokens)).detach().numpy() - reference).max() < TOL


def test_bf16_models_agree_across_backends(tmp_path):
    """bf16 weights: both backends read the same bits and give close logits."""
    from helpers import TINY_MODELS

    cfg = TINY_MODELS["gqa8x2-tied"]
    weights = random_weights(cfg)
    tokens = tokens_for(cfg, 2, 16)
    t = build_torch(cfg, weights, dtype="bfloat16")(torch.from_numpy(tokens)).float().detach().numpy()
    m = np.array(build_mlx(cfg, weights, dtype="bfloat16")(mx.array(tokens)).astype(mx.float32))
    fp32 = build_torch(cfg, weights)(torch.from_numpy(tokens)).detach().numpy()
    scale = np.abs(fp32).max()
    assert np.abs(t - fp32).max() < 0.05 * scale
    assert np.abs(m - fp32).max() < 0.05 * scale
