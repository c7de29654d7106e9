"""Generation on both backends: KV cache = recomputation, backend parity, transformers parity, sampling."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import TINY_MODELS, random_weights

from tinyllama.mlx_model.generate import as_backend as mlx_backend
from tinyllama.mlx_model.state import build_model as build_mlx
from tinyllama.torch_model.generate import as_backend as torch_backend
from tinyllama.torch_model.state import build_model as build_torch

GEN = {"mlx": mlx_backend, "torch": torch_backend}
PROMPT = [5, 17, 3, 42, 8, 11, 29]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def models(name: str, seed: int = 0, **changes):
    cfg = dataclasses.replace(TINY_MODELS[name], **changes)
    weights = random_weights(cfg, seed)
    return cfg, {"mlx": build_mlx(cfg, weights), "torch": build_torch(cfg, weights).eval()}


def recompute_greedy(backend: str, model, prompt: list[int], n: int) -> list[int]:
    """The reference: no cache, the whole sequence through the model for every new token."""
    ids = list(prompt)
    for _ in range(n):
        if backend == "mlx":
            logits = np.array(model(mx.array([ids]))[0, -1])
        else:
            with torch.no_grad():
                logits = model(torch.tensor([ids]))[0, -1].numpy()
        ids.append(int(np.argmax(logits)))
    return ids[len(prompt) :]


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("name", ["gqa8x2-tied", "mha4-untied", "mqa-headdim-theta"])
def test_cached_greedy_equals_recomputation(backend, name):
    _, built = models(name)
    out = list(GEN[backend](built[backend]).generate(PROMPT, 24))
    assert len(out) == 24
    assert out == recompute_greedy(backend, built[backend], PROMPT, 24)


@pytest.mark.parametrize("name", ["gqa8x2-tied", "mha4-untied"])
def test_last_position_logits_equal_the_full_forward(name):
    """The decode steps' head (MLX: weight @ h.T, torch: transposed storage) is the model's own head."""
    from tinyllama.mlx_model.generate import last_logits as mlx_last
    from tinyllama.torch_model.generate import last_logits as torch_last

    _, built = models(name)
    tokens = np.array([PROMPT, PROMPT[::-1]])  # (2, T)
    full = np.array(built["mlx"](mx.array(tokens))[:, -1])  # (2, V)
    np.testing.assert_allclose(np.array(mlx_last(built["mlx"], mx.array(tokens), None)), full, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ours = torch_last(built["torch"], torch.tensor(tokens), None).numpy()
        np.testing.assert_allclose(ours, built["torch"](torch.tensor(tokens))[:, -1].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_greedy_is_identical_across_backends(name):
    _, built = models(name, seed=1)
    outputs = {b: list(GEN[b](built[b]).generate(PROMPT, 40)) for b in GEN}
    assert outputs["mlx"] == outputs["torch"]
    # the penalty (host-side path) breaks repetition loops: a long varied stream, still identical
    penalised = {b: list(GEN[b](built[b]).generate(PROMPT, 40, repetition_penalty=1.5)) for b in GEN}
    assert penalised["mlx"] == penalised["torch"]
    assert len(set(penalised["mlx"])) > 3


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_seeded_sampling_is_reproducible(backend):
    _, built = models("gqa6x3-untied-eps")
    opts = dict(temperature=1.0, top_k=50, top_p=0.9)
    first = list(GEN[backend](built[backend]).generate(PROMPT, 30, seed=7, **opts))
    again = list(GEN[backend](built[backend]).generate(PROMPT, 30, seed=7, **opts))
    other = list(GEN[backend](built[backend]).generate(PROMPT, 30, seed=8, **opts))
    assert first == again
    assert first != other


def test_seeded_sampling_is_identical_across_backends():
    _, built = models("gqa6x3-untied-eps")
    opts = dict(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.2, seed=3)
    assert list(mlx_backend(built["mlx"]).generate(PROMPT, 30, **opts)) == list(
        torch_backend(built["torch"]).generate(PROMPT, 30, **opts)
    )


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_top_k_1_and_tiny_top_p_equal_greedy(backend):
    _, built = models("mha4-untied")
    model = built[backend]
    greedy = list(GEN[backend](model).generate(PROMPT, 20))
    for seed in (0, 1, 2):
        assert list(GEN[backend](model).generate(PROMPT, 20, temperature=1.5, top_k=1, seed=seed)) == greedy
        assert list(GEN[backend](model).generate(PROMPT, 20, temperature=1.5, top_p=1e-6, seed=seed)) == greedy
    # and plain sampling at that temperature does leave the greedy path
    sampled = [list(GEN[backend](model).generate(PROMPT, 20, temperature=1.5, seed=s)) for s in range(3)]
    assert any(s != greedy for s in sampled)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_stops_before_eos_and_at_max_new_tokens(backend):
    _, built = models("gqa6x3-untied-eps")
    free = list(GEN[backend](built[backend]).generate(PROMPT, 30))
    eos = next(t for t in free[3:] if t not in free[:3])
    stopped = list(GEN[backend](built[backend]).generate(PROMPT, 30, eos_id=eos))
    assert stopped == free[: free.index(eos)]
    assert list(GEN[backend](built[backend]).generate(PROMPT, 30, eos_id=[999, eos])) == stopped
    assert len(list(GEN[backend](built[backend]).generate(PROMPT, 5))) == 5


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_long_prompt_is_trimmed_from_the_left(backend):
    cfg, built = models("gqa8x2-tied", max_seq_len=32)
    prompt = list(np.random.default_rng(0).integers(0, cfg.vocab_size, 40))
    with pytest.warns(UserWarning, match="keeping the last 22"):
        out = list(GEN[backend](built[backend]).generate(prompt, 10))
    assert len(out) == 10
    assert out == list(GEN[backend](built[backend]).generate(prompt[-22:], 10))


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_batch_equals_one_by_one(backend):
    _, built = models("gqa6x3-untied-eps")
    model = built[backend]
    prompts = [PROMPT, [4, 9, 2, 7, 1, 3, 8], [6, 6, 6], PROMPT[:3], [200]]  # two equal-length groups
    for opts in ({}, {"temperature": 1.0, "top_p": 0.9, "seed": 5}):
        alone = [list(GEN[backend](model).generate(p, 12, eos_id=1, **opts)) for p in prompts]
        batched = dict(GEN[backend](model).generate_batch(prompts, 12, eos_id=1, **opts))
        assert [batched[i] for i in range(len(prompts))] == alone


def test_matches_transformers_generate(tmp_path):
    """Greedy (also with a repetition penalty) equals transformers' generate on a directory it wrote."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tinyllama.mlx_model.state import load_model as load_mlx
    from tinyllama.torch_model.generate import load_backend as load_torch_backend
    from tinyllama.torch_model.state import load_model as load_torch

    torch.manual_seed(0)
    hf_cfg = LlamaConfig(
        vocab_size=120, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=96, rope_theta=50000.0, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    hf = LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 2:
                p.mul_(6.0)  # sharper than the 0.02 init: argmax gaps far above float noise
    hf.save_pretrained(tmp_path / "hf")
    ours = {"mlx": load_mlx(tmp_path / "hf")[0], "torch": load_torch(tmp_path / "hf")[0].eval()}
    torch_backend = load_torch_backend(tmp_path / "hf", device="cpu")
    for penalty in (1.0, 1.3):
        with torch.no_grad():
            opts = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False, repetition_penalty=penalty)
            ref = hf.generate(torch.tensor([PROMPT]), **opts)[0, len(PROMPT) :].tolist()
        for backend, model in ours.items():
            assert list(GEN[backend](model).generate(PROMPT, 30, repetition_penalty=penalty)) == ref, backend
        # the CPU inference path (fp32 weights stored transposed, torch_model.generate.transpose_storage) too
        assert list(torch_backend.generate(PROMPT, 30, repetition_penalty=penalty)) == ref
