"""Our checkpoint -> a GGUF file that llama.cpp, Ollama and transformers (`gguf_file=`) load.

llama.cpp rotates q/k with interleaved pairs, so their rows are permuted (`permute_qk`) exactly as
its own convert_hf_to_gguf.py does. The tokenizer goes in as metadata with `tokenizer.ggml.pre`
stated explicitly (never left to llama.cpp's hash matching). Norms stay float32 in every mode.

Block types (q8_0, q4_0, q4_1, q5_0, q5_1) are quantized by the `gguf` package's numpy code, which
matches llama.cpp's reference `quantize_row_*_ref` (ggml-quants.c): blocks of 32 values along a row, so a
matrix whose rows are not a multiple of 32 is written as f16 instead. With the 4/5-bit types the output
head (`output.weight`, or `token_embd.weight` when the embedding is tied and doubles as the head) is
q8_0, as llama-quantize keeps it at a higher precision (q6_K there; gguf cannot quantize q6_K, and
llama.cpp itself picks q8_0 when rows are not a multiple of 256). An untied `token_embd` is only looked
up, never multiplied, and gets the file's type, as llama-quantize does.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from tinyllama.convert.common import (
    FP16_MAX,
    ConvertError,
    check_expressible,
    check_output,
    check_space,
    load_checked_weights,
    writing,
)
from tinyllama.convert.gguf_layout import gguf_names, permute_qk, qk_heads
from tinyllama.convert.gguf_tokenizer import GGUFVocab, vocab_from_tokenizer_dir
from tinyllama.core.architecture import architecture, head_name
from tinyllama.core.cli import progress
from tinyllama.core.config import ModelConfig
from tinyllama.core.dtypes import numpy_dtype
from tinyllama.core.model_files import read_hf_config, read_model_config

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")

# --dtype -> general.file_type (gguf.LlamaFileType member): what llama.cpp reports as the model's type
FILE_TYPES = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0",
    "q4_1": "MOSTLY_Q4_1",
    "q5_0": "MOSTLY_Q5_0",
    "q5_1": "MOSTLY_Q5_1",
}
# llama.cpp's block types (gguf.GGMLQuantizationType names): 32 values per block, one fp16 scale `d` first
# (and an fp16 minimum `m` right after it in the *_1 types)
BLOCK_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1"}
BLOCK_SIZE = 32
# the output head of a 4/5-bit file: it sets every logit, so it keeps 8 bits (see the module docstring)
HEAD_DTYPE = "q8_0"
FALLBACK_DTYPE = "f16"  # for matrices whose rows are not a multiple of BLOCK_SIZE


def tensor_dtype(value: np.ndarray, dtype: str, head: bool = False) -> str:
    """The type one tensor is written in for --dtype `dtype`: 1-D tensors f32; with a 4/5-bit `dtype` the
    output head q8_0; a block type that does not fit the rows (not a multiple of 32) f16."""
    if value.ndim == 1:
        return "f32"
    if head and dtype in BLOCK_TYPES and dtype != "q8_0":
        dtype = HEAD_DTYPE
    if dtype in BLOCK_TYPES and value.shape[-1] % BLOCK_SIZE != 0:
        return FALLBACK_DTYPE
    return dtype


def _quantize_blocks(name: str, value: np.ndarray, dtype: str) -> np.ndarray:
    """`value` (float32, rows a multiple of 32) in llama.cpp's `dtype` blocks, by the gguf package (its numpy
    code is llama.cpp's quantize_row_*_ref). Refused when a block's fp16 scale or minimum would be inf."""
    import gguf
    from gguf.quants import quantize

    qtype = gguf.GGMLQuantizationType[BLOCK_TYPES[dtype]]
    try:
        with np.errstate(over="ignore"):  # an fp16 scale that overflows is refused just below, with the reason
            data = quantize(value, qtype)
    except (NotImplementedError, gguf.quants.QuantError) as exc:
        raise ConvertError(
            f"the installed gguf package cannot quantize {qtype.name} ({exc}); upgrade it (pip install -U gguf) "
            "or choose --dtype q8_0 or f16"
        ) from None
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    fp16_fields = 2 if dtype.endswith("_1") else 1  # d, or d and m
    header = data.reshape(-1, type_size)[:, : 2 * fp16_fields]
    if not np.isfinite(np.ascontiguousarray(header).view(np.float16)).all():
        raise ConvertError(
            f"tensor '{name}' has values too large for {qtype.name}'s fp16 block scales; export with --dtype bf16"
        )
    return data


def encode_tensor(name: str, value: np.ndarray, dtype: str, head: bool = False):
    """(data, GGML type) for one tensor in the type `tensor_dtype` picks (`head`: it is the output head)."""
    from gguf import GGMLQuantizationType as Q

    dtype = tensor_dtype(value, dtype, head)
    if dtype == "f32":
        return np.ascontiguousarray(value, dtype=np.float32), Q.F32
    if dtype == "bf16":
        bits = value if value.dtype.name == "bfloat16" else value.astype(np.float32).astype(numpy_dtype("bfloat16"))
        return np.ascontiguousarray(bits).view(np.uint8), Q.BF16
    as_f32 = value.astype(np.float32)
    if dtype in BLOCK_TYPES:
        return _quantize_blocks(name, as_f32, dtype), Q[BLOCK_TYPES[dtype]]
    if np.abs(as_f32).max(initial=0.0) > FP16_MAX:
        raise ConvertError(f"tensor '{name}' has values beyond fp16's range (65504); export with --dtype bf16")
    return as_f32.astype(np.float16), Q.F16


def gguf_tensors(cfg: ModelConfig, weights: dict[str, np.ndarray], dtype: str) -> list[tuple[str, np.ndarray, object]]:
    """(GGUF name, encoded data, GGML type) for every weight, q/k rows in llama.cpp's order."""
    out = []
    head = head_name(cfg)
    for gguf_name, name in progress(gguf_names(cfg).items(), desc=f"encode {dtype}", unit="tensor"):
        heads = qk_heads(cfg, name)
        value = permute_qk(weights[name], heads) if heads else weights[name]
        data, qtype = encode_tensor(name, value, dtype, head=name == head)
        out.append((gguf_name, data, qtype))
    return out


def write_gguf(
    path: Path, cfg: ModelConfig, tensors: list[tuple[str, np.ndarray, object]], vocab: GGUFVocab, dtype: str, name: str
) -> None:
    """Write metadata (llama.* and tokenizer.ggml.*) and tensors with gguf's own writer."""
    import gguf

    file_type = gguf.LlamaFileType[FILE_TYPES[dtype]]
    w = gguf.GGUFWriter(path, architecture(cfg))  # its keys are named after it: llama.context_length, ...
    w.add_type("model")
    w.add_name(name)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.resolved_head_dim)
    w.add_key_length(cfg.resolved_head_dim)  # always, as llama.cpp's converter does: readers of qwen3 assume 128
    w.add_value_length(cfg.resolved_head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(file_type)
    if dtype in BLOCK_TYPES:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    for token_id, add in (
        (vocab.bos_token_id, w.add_bos_token_id),
        (vocab.eos_token_id, w.add_eos_token_id),
        (vocab.unk_token_id, w.add_unk_token_id),
        (vocab.pad_token_id, w.add_pad_token_id),
    ):
        if token_id is not None:
            add(int(token_id))
    w.add_add_bos_token(vocab.add_bos_token)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)

    for tensor_name, data, qtype in tensors:
        w.add_tensor(tensor_name, data, raw_dtype=qtype)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=sys.stderr.isatty())
    except BaseException:
        with contextlib.suppress(Exception):  # a full disk fails the flush in close() too; the file goes anyway
            w.close()
        raise
    w.close()


def export_gguf(
    ckpt: str | Path,
    out: str | Path,
    *,
    dtype: str = "f16",
    tokenizer: str | Path | None = None,
    tokenizer_pre: str | None = None,
    force: bool = False,
) -> Path:
    """Write a GGUF of the checkpoint's weights and tokenizer, as the llama.cpp architecture that computes it."""
    if dtype not in GGUF_DTYPES:
        raise ConvertError(f"unknown GGUF dtype '{dtype}'; choose one of {', '.join(GGUF_DTYPES)}")
    out = check_output(out, force, kind="file", source=ckpt)
    cfg = read_model_config(ckpt)
    check_expressible(ckpt, cfg, "llama.cpp")
    hf = read_hf_config(ckpt)
    weights = load_checked_weights(ckpt, cfg, "use another checkpoint")  # before anything sized by the config
    vocab = vocab_from_tokenizer_dir(Path(tokenizer or ckpt), cfg.vocab_size, tokenizer_pre)
    for key in ("bos_token_id", "eos_token_id"):  # the model's own ids win over the tokenizer's guesses
        if type(hf.get(key)) is int and 0 <= hf[key] < cfg.vocab_size:
            setattr(vocab, key, hf[key])
    try:
        tensors = gguf_tensors(cfg, weights, dtype)
    except ConvertError as exc:  # name the checkpoint whose tensor cannot be encoded
        raise ConvertError(f"{ckpt}: {exc}") from None
    check_space(out, sum(data.nbytes for _, data, _ in tensors))
    with writing(out) as tmp:
        write_gguf(tmp, cfg, tensors, vocab, dtype, name=Path(ckpt).name.removesuffix(".ckpt"))
    return out
