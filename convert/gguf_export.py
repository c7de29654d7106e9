"""Our checkpoint -> a GGUF file that llama.cpp, Ollama and transformers (`gguf_file=`) load.

llama.cpp rotates q/k with interleaved pairs, so their rows are permuted (`permute_qk`) exactly as
its own convert_hf_to_gguf.py does. The tokenizer goes in as metadata with `tokenizer.ggml.pre`
stated explicitly (never left to llama.cpp's hash matching). Norms stay float32 in every mode;
q8_0 falls back to f16 for a tensor whose rows are not a multiple of its 32-value block.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinyllama.convert.common import FP16_MAX, ConvertError, check_output, check_space, load_checked_weights, writing
from tinyllama.convert.gguf_layout import hf_to_gguf_name, permute_qk, qk_heads
from tinyllama.convert.gguf_tokenizer import GGUFVocab, vocab_from_tokenizer_dir
from tinyllama.core.config import ModelConfig
from tinyllama.core.model_files import read_hf_config, read_model_config
from tinyllama.core.weights import numpy_dtype

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")


def encode_tensor(name: str, value: np.ndarray, dtype: str):
    """(data, GGML type) for one tensor: 1-D tensors f32, the rest in `dtype` (q8_0 needs rows % 32 == 0)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if value.ndim == 1 or dtype == "f32":
        return np.ascontiguousarray(value, dtype=np.float32), Q.F32
    if dtype == "bf16":
        bits = value if value.dtype.name == "bfloat16" else value.astype(np.float32).astype(numpy_dtype("bfloat16"))
        return np.ascontiguousarray(bits).view(np.uint8), Q.BF16
    as_f32 = value.astype(np.float32)
    if dtype == "q8_0" and value.shape[-1] % 32 == 0:
        return quantize(as_f32, Q.Q8_0), Q.Q8_0
    if np.abs(as_f32).max(initial=0.0) > FP16_MAX:
        raise ConvertError(f"tensor '{name}' has values beyond fp16's range (65504); export with --dtype bf16")
    return as_f32.astype(np.float16), Q.F16


def gguf_tensors(cfg: ModelConfig, weights: dict[str, np.ndarray], dtype: str) -> list[tuple[str, np.ndarray, object]]:
    """(GGUF name, encoded data, GGML type) for every weight, q/k rows in llama.cpp's order."""
    out = []
    for name, value in tqdm(weights.items(), desc=f"encode {dtype}", unit="tensor", disable=None):
        heads = qk_heads(cfg, name)
        value = permute_qk(value, heads) if heads else value
        data, qtype = encode_tensor(name, value, dtype)
        out.append((hf_to_gguf_name(name), data, qtype))
    return out


def write_gguf(
    path: Path, cfg: ModelConfig, tensors: list[tuple[str, np.ndarray, object]], vocab: GGUFVocab, dtype: str, name: str
) -> None:
    """Write metadata (llama.* and tokenizer.ggml.*) and tensors with gguf's own writer."""
    import gguf

    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]
    w = gguf.GGUFWriter(path, "llama")
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
    if cfg.resolved_head_dim * cfg.n_heads != cfg.d_model:
        w.add_key_length(cfg.resolved_head_dim)
        w.add_value_length(cfg.resolved_head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(file_type)
    if dtype == "q8_0":
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
    """Write a llama GGUF of the checkpoint's weights and tokenizer."""
    if dtype not in GGUF_DTYPES:
        raise ConvertError(f"unknown GGUF dtype '{dtype}'; choose one of {', '.join(GGUF_DTYPES)}")
    out = check_output(out, force, kind="file", source=ckpt)
    cfg = read_model_config(ckpt)
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
