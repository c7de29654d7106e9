"""GGUF export -> transformers (gguf_file=) and our importer agree with the source checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import GGUF_MODELS, TEXT, make_checkpoint, run_convert

from tinyllama.convert.gguf_export import export_gguf
from tinyllama.convert.gguf_import import import_gguf, load_gguf, metadata, open_reader
from tinyllama.core.model_files import load_weights, read_model_config
from tinyllama.torch_model.state import load_model as load_torch

# max |logit difference| vs the source checkpoint, logits of max |3.2..3.5|; measured (docs/convert.md):
# f32 2.4e-6, f16 2.7e-3, bf16 2.7e-2, q8_0 9.0e-2 -- each bound is about twice the worst measured
TOLERANCE = {"f32": 1e-5, "f16": 6e-3, "bf16": 0.06, "q8_0": 0.2}
TOKENS = np.random.default_rng(0).integers(0, 290, size=(2, 24))


@pytest.fixture(scope="module", params=sorted(GGUF_MODELS))
def tiny(request, tmp_path_factory):
    """(checkpoint, its torch logits on TOKENS) for each GGUF-friendly tiny shape."""
    tmp = tmp_path_factory.mktemp(request.param)
    ckpt = make_checkpoint(tmp, GGUF_MODELS[request.param])
    model, _ = load_torch(ckpt)
    with torch.no_grad():
        logits = model(torch.from_numpy(TOKENS)).numpy()
    assert np.abs(logits).max() > 1.0  # real signal, so a wrong permutation shows
    return ckpt, logits


def _transformers_logits(directory, file_name: str) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file_name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(TOKENS), use_cache=False).logits.numpy()


def test_f32_export_reimports_bit_exact(tiny, tmp_path):
    ckpt, _ = tiny
    out = export_gguf(ckpt, tmp_path / "m.gguf", dtype="f32")
    cfg, weights, _ = load_gguf(out)
    assert cfg == read_model_config(ckpt)
    source = load_weights(ckpt)
    assert weights.keys() == source.keys()
    for name, value in source.items():
        assert np.array_equal(weights[name], value), name


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16", "q8_0"])
def test_transformers_and_our_importer_match_the_source(tiny, dtype, tmp_path):
    ckpt, reference = tiny
    export_gguf(ckpt, tmp_path / "m.gguf", dtype=dtype)
    theirs = _transformers_logits(tmp_path, "m.gguf")
    assert np.abs(theirs - reference).max() < TOLERANCE[dtype]

    model, _ = load_torch(import_gguf(tmp_path / "m.gguf", tmp_path / "back.ckpt"))
    with torch.no_grad():
        ours = model(torch.from_numpy(TOKENS)).numpy()
    # both readers dequantize the same bytes: they agree far tighter than either agrees with the source
    assert np.abs(ours - theirs).max() < 1e-5
    if dtype == "f32":
        assert np.abs(ours - reference).max() == 0.0


def test_gguf_metadata_and_tokenizer(tiny, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    ckpt, _ = tiny
    cfg = read_model_config(ckpt)
    out = export_gguf(ckpt, tmp_path / "m.gguf", dtype="q8_0")
    meta = metadata(open_reader(out), with_arrays=("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"))
    expected = {
        "general.architecture": "llama",
        "llama.context_length": cfg.max_seq_len,
        "llama.embedding_length": cfg.d_model,
        "llama.block_count": cfg.n_layers,
        "llama.feed_forward_length": cfg.d_ff,
        "llama.attention.head_count": cfg.n_heads,
        "llama.attention.head_count_kv": cfg.n_kv_heads,
        "llama.rope.dimension_count": cfg.resolved_head_dim,
        "llama.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.eos_token_id": 0,
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)
    source = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    assert len(meta["tokenizer.ggml.tokens"]) == cfg.vocab_size
    assert meta["tokenizer.ggml.token_type"][0] == 3  # <|endoftext|>: CONTROL
    if cfg.vocab_size > source.get_vocab_size():  # ids the tokenizer never uses: [PADi], type UNUSED
        assert meta["tokenizer.ggml.tokens"][-1] == f"[PAD{cfg.vocab_size - 1}]"
        assert meta["tokenizer.ggml.token_type"][-1] == 5
    types = {t.name: t.tensor_type.name for t in open_reader(out).tensors}
    assert types["output_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == ("Q8_0" if cfg.d_ff % 32 == 0 else "F16")  # 96 % 32 == 0 as well

    via_transformers = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    import_gguf(out, tmp_path / "back.ckpt")
    via_ours = Tokenizer.from_file(str(tmp_path / "back.ckpt" / "tokenizer.json"))
    for text in TEXT[:3] + ["unseen wörds 9876 <|endoftext|>"]:
        ids = source.encode(text).ids
        assert via_transformers(text, add_special_tokens=False).input_ids == ids
        assert via_ours.encode(text).ids == ids
        assert via_ours.decode(ids) == source.decode(ids)
    back = json.loads((tmp_path / "back.ckpt" / "config.json").read_text())
    assert back["eos_token_id"] == 0 and back["tie_word_embeddings"] == cfg.tie_embeddings


@pytest.mark.slow
def test_cli_export_gguf_end_to_end(tiny, tmp_path):
    ckpt, _ = tiny
    result = run_convert("export-gguf", ckpt, tmp_path / "m.gguf", "--dtype", "q8_0")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.gguf").is_file() and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    info = run_convert("inspect", tmp_path / "m.gguf", "--json")
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["format"] == "gguf" and "Q8_0" in described["dtype"]
    assert described["parameters"] == json.loads(run_convert("inspect", ckpt, "--json").stdout)["parameters"]
