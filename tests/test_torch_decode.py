"""The torch decode path's fast forms give the same results as the plain ones: transposed weight storage
(load_backend on the CPU), fused q/k/v and gate/up products (model.fuse_projections), one-query GQA attention, the
rolled RoPE, the fused fp32 RMSNorm, numpy's argmax, and a KV cache that never grows past max_seq_len."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, TINY_MODELS, random_weights

from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.torch_model.cache import KVCache
from tinyllama.torch_model.generate import Decoder, as_backend, last_logits, load_backend, transpose_storage
from tinyllama.torch_model.model import RMSNorm, RoPE, attend, fuse_projections
from tinyllama.torch_model.state import build_model, load_model

PROMPT = [5, 17, 3, 42, 8, 11, 29]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def checkpoint(tmp_path, name: str, **changes):
    cfg = dataclasses.replace(TINY_MODELS[name], **changes)
    return cfg, save_checkpoint(tmp_path / f"{name}.ckpt", random_weights(cfg), cfg)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_transposed_storage_keeps_shapes_values_and_tokens(name, tmp_path):
    cfg, path = checkpoint(tmp_path, name)
    plain = load_model(path)[0].eval()
    backend = load_backend(path, device="cpu")
    for (key, a), b in zip(plain.state_dict().items(), backend.model.state_dict().values(), strict=True):
        assert a.shape == b.shape and torch.equal(a, b), key
        if a.ndim == 2 and torch.backends.mkl.is_available():
            assert b.stride()[0] == 1, key  # (out, in) viewed over (in, out) row-major storage
    ours, reference = backend, as_backend(plain)
    for opts in ({}, {"repetition_penalty": 1.3}, {"temperature": 0.9, "top_p": 0.9, "seed": 3}):
        assert list(ours.generate(PROMPT, 30, **opts)) == list(reference.generate(PROMPT, 30, **opts))
    with torch.no_grad():
        tokens = torch.tensor([PROMPT * 3])
        assert (backend.model(tokens) - plain(tokens)).abs().max() < 1e-4
    windows = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 17))
    expected_loss = reference.mean_loss(windows, batch_size=2)
    assert backend.mean_loss(windows, batch_size=2) == pytest.approx(expected_loss, abs=1e-5)


def test_trainers_models_keep_their_layout():
    """as_backend (the trainers' samples) never touches the parameters; bf16 weights are never transposed."""
    cfg = TINY_MODELS["gqa8x2-tied"]
    model = build_model(cfg, random_weights(cfg))
    list(as_backend(model).generate(PROMPT, 3))
    assert all(p.is_contiguous() for p in model.parameters())
    bf16 = transpose_storage(build_model(cfg, random_weights(cfg), dtype="bfloat16"))
    assert all(p.is_contiguous() for p in bf16.parameters())


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
@pytest.mark.parametrize("transposed", [True, False])
def test_fused_projections_compute_the_plain_models_logits(name, transposed):
    """A model with fused q/k/v and gate/up products gives the plain model's logits, prefill and step after step,
    1 and 3 rows, to fp32 rounding, and the same greedy token. Not bit for bit: one fused product and three
    separate ones may take different GEMM kernels, which round differently on some CPUs (equal on an AMD EPYC,
    not on an Intel Xeon)."""
    cfg = TINY_MODELS[name]
    plain = build_model(cfg, random_weights(cfg)).eval()
    fused = build_model(cfg, random_weights(cfg)).eval()
    fuse_projections(transpose_storage(fused) if transposed else fused)
    rng = np.random.default_rng(1)
    for rows in (1, 3):
        tokens = torch.from_numpy(rng.integers(0, cfg.vocab_size, (rows, 5)))
        plain_cache, fused_cache = plain.make_cache(), fused.make_cache()
        with torch.inference_mode():
            for _ in range(7):
                expected = last_logits(plain, tokens, plain_cache)  # (rows, V)
                got = last_logits(fused, tokens, fused_cache)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
                assert torch.equal(got.argmax(-1), expected.argmax(-1))
                tokens = torch.from_numpy(rng.integers(0, cfg.vocab_size, (rows, 1)))
        assert fused_cache[0].offset == plain_cache[0].offset == 11
        torch.testing.assert_close(
            fused_cache[-1].keys[:, :, :11], plain_cache[-1].keys[:, :, :11], rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_projections_are_views_of_one_buffer(dtype):
    cfg = TINY_MODELS["gqa6x3-untied-eps"]
    model = build_model(cfg, random_weights(cfg), dtype=dtype).eval()
    model = transpose_storage(model) if dtype == "float32" else model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse_projections(model)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    assert attn.qkv.shape == (6 * 8 + 2 * 3 * 8, 48) and mlp.gate_up.shape == (2 * 77, 48)
    for whole, parts in (
        (attn.qkv, (attn.q_proj, attn.k_proj, attn.v_proj)),
        (mlp.gate_up, (mlp.gate_proj, mlp.up_proj)),
    ):
        rows = 0
        for part in parts:  # each weight is its rows of the buffer, no copy: memory is not doubled
            assert part.weight.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr()
            assert torch.equal(part.weight, whole[rows : rows + part.weight.shape[0]])
            rows += part.weight.shape[0]


def test_one_token_step_refuses_positions_past_max_seq_len():
    cfg = dataclasses.replace(TINY_MODELS["gqa8x2-tied"], max_seq_len=8)
    model = fuse_projections(build_model(cfg, random_weights(cfg)).eval())
    cache = model.make_cache()
    with torch.inference_mode():
        last_logits(model, torch.zeros(1, 8, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="position 9 exceeds max_seq_len 8"):
            last_logits(model, torch.zeros(1, 1, dtype=torch.long), cache)


@pytest.mark.parametrize("rows", [2, 3, 5])
def test_batched_decoding_with_transposed_storage(rows, tmp_path):
    _, path = checkpoint(tmp_path, "gqa6x3-untied-eps")
    backend = load_backend(path, device="cpu")
    rng = np.random.default_rng(rows)
    prompts = [rng.integers(0, 257, 6).tolist() for _ in range(rows)]
    for opts in ({}, {"temperature": 1.0, "top_p": 0.9, "seed": 5}):
        batched = dict(backend.generate_batch(prompts, 12, **opts))
        assert [batched[i] for i in range(rows)] == [list(backend.generate(p, 12, **opts)) for p in prompts]


@pytest.mark.parametrize(("n_heads", "n_kv_heads"), [(4, 4), (6, 2), (8, 1)])
def test_one_query_attention_equals_repeated_kv_heads(n_heads, n_kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, n_heads, 1, 16, generator=g)
    k, v = (torch.randn(2, n_kv_heads, 9, 16, generator=g) for _ in range(2))
    rep = n_heads // n_kv_heads
    expected = F.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), scale=0.25
    )
    out = attend(q, k, v, 0.25)
    assert out.shape == (2, n_heads, 1, 16)
    assert (out - expected).abs().max() < 1e-6


def rotate_half_reference(x: torch.Tensor, base: float, offset: int) -> torch.Tensor:
    """HF's formula: x * cos + rotate_half(x) * sin, with the plain (unsigned) sin table."""
    T, hd = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    angles = torch.outer(torch.arange(offset, offset + T, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
    cos, sin = angles.cos().float(), angles.sin().float()
    x1, x2 = x.float().chunk(2, dim=-1)
    return (x.float() * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rolled_rope_is_rotate_half_bit_for_bit(dtype):
    x = torch.randn(2, 3, 5, 32).to(dtype)
    assert torch.equal(RoPE(32, 10000.0, 64)(x, 7), rotate_half_reference(x, 10000.0, 7))


def test_fp32_rms_norm_fast_path_is_the_general_form():
    """The one-call form and the general one, forward and backward, to fp32 rounding (one kernel applies the
    weight inside, the other after: not asserted bit for bit, which may hold on one CPU only)."""
    norm = RMSNorm(64, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(64))
    x = torch.randn(3, 7, 64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    fast = norm(x)
    general = norm.weight * F.rms_norm(x2, (64,), eps=1e-5)
    torch.testing.assert_close(fast, general, rtol=1e-6, atol=1e-7)
    grad = torch.randn_like(fast)
    (dx,) = torch.autograd.grad(fast, x, grad)
    (dx2,) = torch.autograd.grad(general, x2, grad)
    torch.testing.assert_close(dx, dx2, rtol=1e-6, atol=1e-6)


def test_greedy_ids_are_torch_argmax_first_max_wins():
    cfg = TINY_MODELS["gqa8x2-tied"]
    model = build_model(cfg, random_weights(cfg)).eval()
    decode = Decoder(model, greedy=True)
    ids = decode(np.array([PROMPT, PROMPT[::-1]]))
    with torch.no_grad():
        expected = model(torch.tensor([PROMPT, PROMPT[::-1]]))[:, -1].argmax(-1)
    assert ids.dtype == torch.int64 and torch.equal(ids, expected)
    assert decode(ids).shape == (2,)  # the ids feed the next step as they are
    tied = torch.tensor([[0.0, 3.0, 3.0, 1.0]])
    assert int(torch.from_numpy(tied.numpy().argmax(axis=-1))) == int(tied.argmax(-1)) == 1


def test_cache_never_grows_past_max_seq_len():
    cfg = dataclasses.replace(TINY_MODELS["gqa8x2-tied"], max_seq_len=300)
    model = build_model(cfg, random_weights(cfg)).eval()
    cache = model.make_cache()
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 301)))
    with torch.no_grad():
        full = model(tokens[:, :300])
        steps = [model(tokens[:, :250], cache)] + [model(tokens[:, i : i + 1], cache) for i in range(250, 300)]
        assert cache[0].offset == 300 and cache[0].keys.shape[2] == 300  # 256, then capped at 300 (not 512)
        assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-4
        with pytest.raises(ValueError, match="exceeds max_seq_len 300"):
            model(tokens[:, 300:], cache)
    small = KVCache(max_len=10)
    small.update(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))
    assert small.keys.shape[2] == 10


def test_generation_fills_the_context_exactly(tmp_path):
    cfg, path = checkpoint(tmp_path, "mha4-untied", max_seq_len=40)
    backend = load_backend(path, device="cpu")
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, 30).tolist()
    out = list(backend.generate(prompt, 10))  # positions 30..39: the last fits, nothing is trimmed
    assert len(out) == 10
    assert out == list(as_backend(load_model(path)[0].eval()).generate(prompt, 10))


@pytest.mark.slow  # a subprocess
def test_inference_never_imports_dynamo(tmp_path):
    """torch._dynamo costs seconds to import; generating must not pull it in."""
    _, path = checkpoint(tmp_path, "gqa8x2-tied")
    code = (
        "import sys; from tinyllama.torch_model.generate import load_backend; "
        f"b = load_backend({str(path)!r}, device='cpu'); list(b.generate([1, 2, 3], 2)); "
        "list(b.generate([1, 2, 3], 2, temperature=0.8, seed=0)); print('torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "False"


def test_a_model_read_from_disk_takes_the_arrays_memory_and_a_shared_one_is_copied():
    """load_model gives its freshly read arrays to the parameters (no copies: ~0.1 s and ~120 MB less at
    start-up); build_model from weights the caller keeps copies them, so training never writes into them."""
    from tinyllama.torch_model.state import load_state

    cfg = TINY_MODELS["gqa8x2-tied"]
    weights = random_weights(cfg)
    kept = {k: v.copy() for k, v in weights.items()}
    model = build_model(cfg, weights)
    for name, p in model.state_dict().items():
        assert not np.shares_memory(p.numpy(), weights[name]), name
    given = build_model(cfg, None)  # init weights: nobody else holds them
    load_state(given, weights, own=True)
    for name, p in given.state_dict().items():
        assert np.shares_memory(p.numpy(), weights[name]) and np.array_equal(p.numpy(), kept[name]), name
        assert p.dtype == torch.float32
    assert all(p.requires_grad for p in given.parameters())  # still trainable parameters


def test_read_only_arrays_are_copied_even_when_given(tmp_path):
    """A GGUF import hands over views of the file's read-only memory map: the parameters get their own
    memory (writing through a read-only view is undefined; torch warns on every such import)."""
    import warnings

    from tinyllama.torch_model.state import load_state

    cfg = TINY_MODELS["gqa8x2-tied"]
    weights = random_weights(cfg)
    path = tmp_path / "w.npy"
    np.save(path, weights["model.norm.weight"])
    weights["model.norm.weight"] = np.load(path, mmap_mode="r")  # read-only, as gguf's reader maps tensors
    model = build_model(cfg, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "non-writable" UserWarning would fail the test
        load_state(model, weights, own=True)
    norm = model.state_dict()["model.norm.weight"]
    assert not np.shares_memory(norm.numpy(), weights["model.norm.weight"])
    assert np.array_equal(norm.numpy(), np.load(path))
    embed = "model.embed_tokens.weight"
    assert np.shares_memory(model.state_dict()[embed].numpy(), weights[embed])  # writable ones: still taken
    norm.add_(1.0)  # writable, and the file is untouched
    assert np.array_equal(np.load(path) + 1.0, norm.numpy())


@pytest.mark.slow  # a subprocess
def test_a_finished_command_skips_teardown_but_runs_atexit_and_flushes(tmp_path):
    """exit_without_teardown (infer, evaluate, convert): exit 0, buffered output and atexit handlers kept."""
    code = (
        "import atexit, sys; import torch; from tinyllama.core.cli import exit_without_teardown; "
        "atexit.register(lambda: print('atexit ran')); sys.stdout.write('buffered '); "
        "sys.stderr.write('err'); exit_without_teardown(); print('never')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert (done.returncode, done.stdout, done.stderr) == (0, "buffered atexit ran\n", "err")
