"""Shared pieces of the convert tests (a tiny byte-level BPE, tiny checkpoints, greedy decoding),
plus the unit tests of the pure helpers they rely on: the q/k permutation and GGUF names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert.common import gguf_names, hf_to_gguf_name, permute_qk, unpermute_qk
from convert.gguf_tokenizer import detect_pre
from core.checkpoint import save_checkpoint
from core.config import ModelConfig
from core.weights import init_weights, parameter_shapes

ROOT = Path(__file__).resolve().parent.parent
TEXT = [
    "The quick brown fox jumps over the lazy dog. The capital of France is Paris.",
    "In 2024 the model read 12345 tokens; it said: hello world, hello again!",
    "Small models learn quickly, and tiny tests run in seconds on two cores.",
] * 20

# GGUF-friendly tiny shapes: rows a multiple of 32 for q8_0, vocab above the tokenizer's size (padding).
GGUF_MODELS = {
    "gqa4x2-untied-headdim": ModelConfig(
        vocab_size=320,
        n_layers=2,
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        d_ff=128,
        head_dim=32,
        rope_theta=500000.0,
        norm_eps=1e-6,
        tie_embeddings=False,
        max_seq_len=128,
    ),
    "mha4-tied": ModelConfig(
        vocab_size=300,
        n_layers=2,
        d_model=64,
        n_heads=4,
        n_kv_heads=4,
        d_ff=96,
        max_seq_len=128,
    ),
}


def write_bpe_tokenizer(directory: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE trained on TEXT, saved as a PreTrainedTokenizerFast directory (GGUF can carry it)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TEXT, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(directory)
    return directory


def random_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Init weights made sharper (x5) and norm gains perturbed, so a wrong permutation cannot hide."""
    weights = init_weights(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    for name, value in weights.items():
        scale = 1 + 0.2 * rng.standard_normal(value.shape) if value.ndim == 1 else 5.0
        weights[name] = (value * scale if value.ndim > 1 else scale).astype(np.float32)
    return weights


def make_checkpoint(tmp: Path, cfg: ModelConfig, name: str = "m.ckpt", seed: int = 0) -> Path:
    tok = write_bpe_tokenizer(tmp / f"tok-{name}")
    state = {"step": 120, "tokens_seen": 245760, "backend": "mlx", "loss": 3.25, "lr": 3e-4}
    return save_checkpoint(
        tmp / name,
        random_weights(cfg, seed),
        cfg,
        tokenizer_dir=tok,
        trainer_state=state,
        bos_token_id=0,
        eos_token_id=0,
    )


def greedy_torch(model, tokens: list[int], steps: int) -> list[int]:
    """Greedy decoding with our torch model's KV cache: prefill once, then one token at a time."""
    import torch

    cache, out = model.make_cache(), []
    with torch.no_grad():
        logits = model(torch.tensor([tokens]), cache)
        for _ in range(steps):
            out.append(int(logits[0, -1].argmax()))
            logits = model(torch.tensor([[out[-1]]]), cache)
    return out


def greedy_mlx(model, tokens: list[int], steps: int) -> list[int]:
    import mlx.core as mx

    cache, out = model.make_cache(), []
    logits = model(mx.array([tokens]), cache)
    for _ in range(steps):
        out.append(int(mx.argmax(logits[0, -1]).item()))
        logits = model(mx.array([[out[-1]]]), cache)
    return out


def run_convert(*args: str) -> subprocess.CompletedProcess:
    """`python -m convert ...` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "convert", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("n_head,head_dim", [(4, 16), (3, 64), (1, 8)])
def test_permute_matches_llama_cpp_and_inverts(n_head, head_dim):
    w = np.arange(n_head * head_dim * 5, dtype=np.float32).reshape(n_head * head_dim, 5)
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim
    ref = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(permute_qk(w, n_head), ref)
    assert np.array_equal(unpermute_qk(permute_qk(w, n_head), n_head), w)
    # within a head, llama.cpp interleaves the two rotate-half halves: rows 0, d/2, 1, d/2+1, ...
    assert permute_qk(w, n_head)[1, 0] == w[head_dim // 2, 0]


def test_gguf_names_cover_every_parameter_once():
    names = list(parameter_shapes(GGUF_MODELS["gqa4x2-untied-headdim"]))
    mapping = gguf_names(names)
    assert len(mapping) == len(names)
    assert hf_to_gguf_name("model.layers.1.self_attn.o_proj.weight") == "blk.1.attn_output.weight"
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.0.ffn_down.weight"} <= set(mapping)


def test_pre_tokenizer_detection(tmp_path):
    spec = json.loads((write_bpe_tokenizer(tmp_path / "tok") / "tokenizer.json").read_text())
    assert detect_pre(spec["pre_tokenizer"]) == "gpt-2"
    smollm = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    assert detect_pre(smollm) == "smollm"
    assert detect_pre({"type": "Whitespace"}) is None
