"""GGUF export with llama.cpp's 4/5-bit block types (q4_0, q4_1, q5_0, q5_1): tensor types and file type,
bytes identical to llama.cpp's reference quantizer, errors within what the blocks allow (and above
q8_0's), the fallback for rows that are not a multiple of 32, and logits through our importer and
transformers (`gguf_file=`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import GGUF_MODELS, make_checkpoint, run_convert

from tinyllama.convert.common import ConvertError
from tinyllama.convert.gguf_export import encode_tensor, export_gguf
from tinyllama.convert.gguf_import import import_gguf, open_reader
from tinyllama.convert.gguf_layout import gguf_names, qk_heads, unpermute_qk
from tinyllama.core.config import ModelConfig
from tinyllama.core.model_files import load_weights, read_model_config
from tinyllama.torch_model.state import load_model as load_torch

QUANT = ("q4_0", "q4_1", "q5_0", "q5_1")
BITS = {"q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5}
# max |logit difference| vs the source checkpoint (logits of max |3.2..3.5|, random weights x5, the worst
# case for quantization); measured over both shapes: q4_0 0.98, q4_1 1.07, q5_0 0.56, q5_1 0.53 (q8_0 0.09)
LOGIT_TOLERANCE = {"q4_0": 2.0, "q4_1": 2.0, "q5_0": 1.2, "q5_1": 1.2}
TOKENS = np.random.default_rng(0).integers(0, 290, size=(2, 24))


@pytest.fixture(scope="module", params=sorted(GGUF_MODELS))
def exported(request, tmp_path_factory):
    """(checkpoint, its torch logits on TOKENS, {dtype: exported .gguf}) for each GGUF-friendly tiny shape
    (one untied with explicit head_dim, one tied MHA), exported as q8_0 and every 4/5-bit type."""
    tmp = tmp_path_factory.mktemp(request.param)
    ckpt = make_checkpoint(tmp, GGUF_MODELS[request.param])
    model, _ = load_torch(ckpt)
    with torch.no_grad():
        logits = model(torch.from_numpy(TOKENS)).numpy()
    files = {}
    for dtype in ("q8_0", *QUANT):
        (tmp / dtype).mkdir()
        files[dtype] = export_gguf(ckpt, tmp / dtype / "m.gguf", dtype=dtype)
    return ckpt, logits, files


def _dequantized(path, ckpt) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """GGUF name -> (type name, dequantized value in HF row order, source value) for every tensor."""
    from gguf.quants import dequantize

    cfg, source = read_model_config(ckpt), load_weights(ckpt)
    names = gguf_names(cfg)
    out = {}
    for t in open_reader(path).tensors:
        hf = names[t.name]
        value = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(source[hf].shape)
        heads = qk_heads(cfg, hf)
        out[t.name] = (t.tensor_type.name, unpermute_qk(value, heads) if heads else value, source[hf])
    return out


def _block_error_bound(source: np.ndarray, dtype: str) -> np.ndarray:
    """Per value, the most a `dtype` block may be off. *_0: scale d = amax / 2^(bits-1), codes -2^(bits-1) ..
    2^(bits-1)-1, so the largest positive values clip by up to one step d. *_1: d = (max - min) / (2^bits - 1),
    round to nearest, so half a step, plus the fp16 rounding of the stored minimum. 1% slack for fp16 d."""
    blocks = source.reshape(-1, 32)
    if dtype.endswith("_0"):
        bound = np.abs(blocks).max(axis=1, keepdims=True) / 2 ** (BITS[dtype] - 1)
    else:
        lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
        bound = (hi - lo) / (2 ** BITS[dtype] - 1) / 2 + np.abs(lo) * 2.0**-11
    return np.broadcast_to(bound * 1.01 + 1e-7, blocks.shape).reshape(source.shape)


@pytest.mark.parametrize("dtype", QUANT)
def test_tensor_types_and_file_type(exported, dtype):
    import gguf

    ckpt, _, files = exported
    cfg = read_model_config(ckpt)
    reader = open_reader(files[dtype])
    fields = {name: f.contents() for name, f in reader.fields.items() if name.startswith("general.")}
    assert fields["general.file_type"] == gguf.LlamaFileType[f"MOSTLY_{dtype.upper()}"]
    assert fields["general.quantization_version"] == gguf.GGML_QUANT_VERSION
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    quantized = dtype.upper()
    for name, kind in types.items():
        if name.endswith("norm.weight"):
            assert kind == "F32", name
        elif name.startswith("blk."):
            assert kind == quantized, name  # every row of these shapes is a multiple of 32
    # the output head keeps 8 bits; an untied embedding (a lookup table) gets the file's type
    if cfg.tie_embeddings:
        assert "output.weight" not in types and types["token_embd.weight"] == "Q8_0"
    else:
        assert types["output.weight"] == "Q8_0" and types["token_embd.weight"] == quantized


def _llamacpp_reference_block(x: np.ndarray, dtype: str) -> bytes:
    """One 32-value block exactly as llama.cpp's quantize_row_<dtype>_ref (ggml-quants.c) writes it, value by
    value in float32: *_0 scale by the signed absolute max (d = max / -8 or -16, codes trunc(x/d + 8.5) capped
    at 15 / 31); *_1 by the range (d = (max - min) / 15 or 31, codes trunc((x - min)/d + 0.5)); nibble j holds
    values j and j + 16; 5-bit types keep the fifth bits in a little-endian uint32 `qh` after the scales."""
    f32 = np.float32
    bits = BITS[dtype]
    if dtype.endswith("_0"):
        amax, top = f32(0), f32(0)
        for v in x:  # the first value of the largest magnitude, with its sign
            if amax < abs(v):
                amax, top = abs(v), v
        half = 2 ** (bits - 1)
        d = top / f32(-half)
        inv = f32(1) / d if d else f32(0)
        codes = [min(2 * half - 1, int(f32(v * inv) + f32(half + 0.5))) for v in x]  # int(): C's truncation
        head = np.float16(d).tobytes()
    else:
        low, high = x.min(), x.max()
        d = (high - low) / f32(2**bits - 1)
        inv = f32(1) / d if d else f32(0)
        codes = [int(f32(f32(v - low) * inv) + f32(0.5)) for v in x]
        if bits == 4:  # quantize_row_q4_1_ref caps at 15; q5_1's does not cap
            codes = [min(15, c) for c in codes]
        head = np.float16(d).tobytes() + np.float16(low).tobytes()
    if bits == 5:
        head += sum(((c >> 4) & 1) << j for j, c in enumerate(codes)).to_bytes(4, "little")
    return head + bytes((codes[j] & 0xF) | ((codes[j + 16] & 0xF) << 4) for j in range(16))


@pytest.mark.parametrize("dtype", QUANT)
def test_blocks_are_llamacpp_reference_bytes(exported, dtype):
    """attn_v (not permuted) byte for byte against a value-by-value port of llama.cpp's reference quantizer."""
    ckpt, _, files = exported
    source = load_weights(ckpt)["model.layers.0.self_attn.v_proj.weight"]
    (tensor,) = [t for t in open_reader(files[dtype]).tensors if t.name == "blk.0.attn_v.weight"]
    expected = b"".join(_llamacpp_reference_block(block, dtype) for block in source.reshape(-1, 32))
    assert np.asarray(tensor.data).tobytes() == expected


@pytest.mark.parametrize("dtype", QUANT)
def test_dequantized_error_within_block_bounds_and_above_q8_0(exported, dtype):
    ckpt, _, files = exported
    ours, q8 = _dequantized(files[dtype], ckpt), _dequantized(files["q8_0"], ckpt)
    rel_rms = {}
    for name, (kind, value, source) in ours.items():
        if kind == dtype.upper():
            assert np.all(np.abs(value - source) <= _block_error_bound(source, dtype)), name
            q8_error = np.sqrt(np.mean((q8[name][1] - source) ** 2))
            rel_rms[name] = np.sqrt(np.mean((value - source) ** 2)) / np.sqrt(np.mean(source**2))
            # measured: 4-bit 0.076-0.087, 5-bit 0.037-0.043 of the weights' rms; q8_0 0.0052-0.0054
            assert np.sqrt(np.mean((value - source) ** 2)) > 4 * q8_error, name
        elif kind == "Q8_0":  # the head: q8_0's bytes exactly
            assert np.array_equal(value, q8[name][1]), name
        else:
            assert kind == "F32" and np.array_equal(value, source), name
    assert len(rel_rms) >= 14  # 7 matrices x 2 layers (+ the untied embedding)
    assert max(rel_rms.values()) < (0.12 if BITS[dtype] == 4 else 0.06)


@pytest.mark.parametrize("dtype", QUANT)
def test_logits_through_our_importer_and_transformers(exported, dtype, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt, reference, files = exported
    model, _ = load_torch(import_gguf(files[dtype], tmp_path / "back.ckpt"))
    with torch.no_grad():
        ours = model(torch.from_numpy(TOKENS)).numpy()
    assert np.abs(ours - reference).max() < LOGIT_TOLERANCE[dtype]

    hf = AutoModelForCausalLM.from_pretrained(files[dtype].parent, gguf_file="m.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(TOKENS), use_cache=False).logits.numpy()
    # transformers dequantizes the same bytes: it agrees with our importer far tighter than with the source
    assert np.abs(theirs - ours).max() < 1e-5
    assert np.array_equal(theirs.argmax(-1), ours.argmax(-1))  # the same greedy next token everywhere
    # vs the unquantized source, loosely: measured 67-88% of the 48 greedy next tokens agree
    assert (theirs.argmax(-1) == reference.argmax(-1)).mean() >= 0.5


# rows of 48 (d_model, d_ff's inputs) cannot be blocked; attn_output (n_heads * head_dim = 64) and ffn_down
# (d_ff = 96) can: one file holds both, and the head (48-value rows) falls back to f16 as well, not q8_0
ODD = ModelConfig(
    vocab_size=300,
    n_layers=1,
    d_model=48,
    n_heads=4,
    n_kv_heads=2,
    head_dim=16,
    d_ff=96,
    tie_embeddings=False,
    max_seq_len=64,
)


@pytest.mark.parametrize("dtype", ["q4_0", "q5_1"])
def test_rows_not_a_multiple_of_32_fall_back_to_f16(dtype, tmp_path):
    import gguf

    ckpt = make_checkpoint(tmp_path, ODD)
    out = export_gguf(ckpt, tmp_path / "m.gguf", dtype=dtype)
    reader = open_reader(out)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType[f"MOSTLY_{dtype.upper()}"]
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types == {
        "token_embd.weight": "F16",
        "output.weight": "F16",
        "output_norm.weight": "F32",
        "blk.0.attn_norm.weight": "F32",
        "blk.0.ffn_norm.weight": "F32",
        "blk.0.attn_q.weight": "F16",
        "blk.0.attn_k.weight": "F16",
        "blk.0.attn_v.weight": "F16",
        "blk.0.attn_output.weight": dtype.upper(),
        "blk.0.ffn_gate.weight": "F16",
        "blk.0.ffn_up.weight": "F16",
        "blk.0.ffn_down.weight": dtype.upper(),
    }
    for name, (kind, value, source) in _dequantized(out, ckpt).items():
        if kind == "F16":
            assert np.array_equal(value, source.astype(np.float16).astype(np.float32)), name
        elif kind == dtype.upper():
            assert np.all(np.abs(value - source) <= _block_error_bound(source, dtype)), name
            assert not np.array_equal(value, source.astype(np.float16).astype(np.float32)), name

    model, _ = load_torch(import_gguf(out, tmp_path / "back.ckpt"))
    reference, _ = load_torch(ckpt)
    with torch.no_grad():
        ours, expected = (m(torch.from_numpy(TOKENS)).numpy() for m in (model, reference))
    assert 0 < np.abs(ours - expected).max() < LOGIT_TOLERANCE[dtype]


def test_values_too_large_for_fp16_scales_or_fallback_are_refused():
    big = np.full((2, 32), 1.0e5, dtype=np.float32)  # q4_1/q5_1 store the block minimum in fp16
    for dtype in ("q4_1", "q5_1"):
        with pytest.raises(ConvertError, match=r"too large for Q\d_1's fp16 block scales; export with --dtype bf16"):
            encode_tensor("w", big, dtype)
    data, qtype = encode_tensor("w", big, "q4_0")  # q4_0's scale is max / -8 = -12500: fits fp16
    assert qtype.name == "Q4_0"
    with pytest.raises(ConvertError, match=r"too large for Q4_0's fp16 block scales"):
        encode_tensor("w", big * 10, "q4_0")  # scale -125000
    with pytest.raises(ConvertError, match=r"beyond fp16's range \(65504\); export with --dtype bf16"):
        encode_tensor("w", np.full((2, 48), 1.0e5, dtype=np.float32), "q4_0")  # 48-value rows: the f16 fallback
    data, qtype = encode_tensor("n", np.full(48, 1.0e5, dtype=np.float32), "q4_0")  # 1-D: f32, as is
    assert qtype.name == "F32" and np.array_equal(data, np.full(48, 1.0e5, dtype=np.float32))


@pytest.mark.slow
def test_cli_export_gguf_q4_0(exported, tmp_path):
    ckpt, _, _ = exported
    result = run_convert("export-gguf", ckpt, tmp_path / "m.gguf", "--dtype", "q4_0")
    assert result.returncode == 0, result.stderr
    info = run_convert("inspect", tmp_path / "m.gguf", "--json")
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["format"] == "gguf" and "Q4_0" in described["dtype"] and "Q8_0" in described["dtype"]
