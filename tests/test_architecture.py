"""The one declaration (core/architecture.py) is what both model files build: the same names and shapes, the
init each parameter declares, and the count, FLOPs and optimizer roles everything else reads from it."""

from __future__ import annotations

import dataclasses
import math
import time

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import TINY_MODELS, VARIANT_MODELS
from mlx.utils import tree_flatten

from tinyllama.core.architecture import (
    block_parameters,
    count_parameters,
    flops_per_token,
    init_weights,
    optimizer_roles,
    parameters,
    tensor_count,
)
from tinyllama.core.config import ModelConfig
from tinyllama.mlx_model.model import Model as MlxModel
from tinyllama.mlx_model.state import build_model as build_mlx
from tinyllama.mlx_model.state import model_state as mlx_state
from tinyllama.torch_model.model import Model as TorchModel
from tinyllama.torch_model.state import build_model as build_torch
from tinyllama.torch_model.state import model_state as torch_state

VARIANTS = {**TINY_MODELS, **VARIANT_MODELS}  # every switch beside the plain shapes: declared and built alike


@pytest.fixture(params=sorted(VARIANTS))
def cfg(request) -> ModelConfig:
    return VARIANTS[request.param]


def test_both_model_files_create_exactly_the_declared_parameters(cfg):
    declared = {name: p.shape for name, p in parameters(cfg).items()}
    torch_shapes = {name: tuple(t.shape) for name, t in TorchModel(cfg).state_dict().items()}
    mlx_shapes = {name: tuple(a.shape) for name, a in tree_flatten(MlxModel(cfg).parameters())}
    assert torch_shapes == declared
    assert mlx_shapes == declared
    assert len(declared) == tensor_count(cfg)


def test_init_follows_each_declaration_and_both_backends_start_identical(cfg):
    weights = init_weights(cfg, seed=3)
    residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    for name, p in parameters(cfg).items():
        value = weights[name]
        assert value.shape == p.shape and value.dtype == np.float32, name
        if p.init == "ones":
            assert np.all(value == 1.0), name
        elif p.init == "zeros":
            assert np.all(value == 0.0), name
        else:
            std = residual_std if p.init == "residual" else cfg.init_std
            assert abs(value.std() - std) < 0.25 * std and abs(value.mean()) < 0.25 * std, name
    assert all(np.array_equal(weights[k], v) for k, v in init_weights(cfg, seed=3).items())
    assert not np.array_equal(
        weights["model.embed_tokens.weight"], init_weights(cfg, seed=4)["model.embed_tokens.weight"]
    )
    ours, theirs = torch_state(build_torch(cfg, seed=3)), mlx_state(build_mlx(cfg, seed=3))
    assert all(np.array_equal(ours[k], weights[k]) and np.array_equal(theirs[k], weights[k]) for k in weights)


def test_count_flops_and_roles_agree_with_the_built_model(cfg):
    model = TorchModel(cfg)
    named = dict(model.named_parameters())
    assert count_parameters(cfg) == sum(p.numel() for p in named.values())
    assert count_parameters(cfg, include_embeddings=False) == count_parameters(cfg) - cfg.vocab_size * cfg.d_model
    in_blocks = {n: p for n, p in named.items() if n.startswith("model.layers.")}
    matrices = sum(p.numel() for p in in_blocks.values() if p.ndim == 2)
    assert count_parameters(cfg, muon_only=True) == matrices
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.resolved_head_dim * 64
    assert flops_per_token(cfg, 64) == 6 * (matrices + cfg.vocab_size * cfg.d_model) + attention
    roles = optimizer_roles(cfg, "muon")
    assert {n for n, r in roles.items() if r == "muon"} == {n for n, p in in_blocks.items() if p.ndim == 2}
    assert {n for n, r in roles.items() if r == "plain"} == {n for n, p in named.items() if p.ndim == 1}
    assert set(optimizer_roles(cfg, "adamw").values()) == {"decay", "plain"}


def test_a_config_claiming_a_billion_layers_is_counted_without_listing_them():
    huge = dataclasses.replace(TINY_MODELS["gqa8x2-tied"], n_layers=10**9)
    start = time.perf_counter()
    count, tensors = count_parameters(huge), tensor_count(huge)
    assert time.perf_counter() - start < 2  # listing 10**9 blocks would take hours; a busy machine may stall 0.1 s
    per_block = sum(p.size for p in block_parameters(huge).values())
    assert count == 10**9 * per_block + huge.vocab_size * huge.d_model + huge.d_model  # tied: one embedding
    assert tensors == 10**9 * len(block_parameters(huge)) + 2


def test_mlx_and_torch_builds_from_the_declaration_compute_the_same_logits(cfg):
    weights = init_weights(cfg, seed=1)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        ours = build_torch(cfg, weights)(torch.from_numpy(tokens)).numpy()
    theirs = np.array(build_mlx(cfg, weights)(mx.array(tokens)))
    assert np.abs(ours - theirs).max() < 1e-4
