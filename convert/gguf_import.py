"""A llama.cpp GGUF file -> our checkpoint: dequantized weights under HF names, config, tokenizer.

Three things differ from an HF directory and are undone here: tensor names (`blk.N.attn_q`),
llama.cpp's interleaved-RoPE row order in q/k (`unpermute_qk`), and the tokenizer, which GGUF
keeps as metadata (`convert.gguf_tokenizer`). Anything llama.cpp's `llama` architecture can hold
that our model does not compute (RoPE scaling, biases, experts, partial rotary) is refused.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tinyllama.convert.common import (
    ConvertError,
    cast_weights,
    check_model_config,
    check_output,
    prepare_tokenizer,
    tokenizer_dir_arg,
    write_imported,
)
from tinyllama.convert.gguf_layout import gguf_names, qk_heads, unpermute_qk
from tinyllama.convert.gguf_tokenizer import GGUFVocab, write_tokenizer_dir
from tinyllama.core.architecture import FORMATS, implied_by, parameter_shapes
from tinyllama.core.cli import progress
from tinyllama.core.config import ModelConfig


def open_reader(path: str | Path):
    """A GGUFReader, or one clear line when the file is missing, not GGUF, truncated or has absurd counts
    (the header is walked with bounds from the file size first: `convert.gguf_header`)."""
    import gguf

    from tinyllama.convert.gguf_header import check_gguf_header

    path = Path(path)
    if not path.exists():
        raise ConvertError(f"{path}: not found; pass an existing .gguf file")
    if not path.is_file():
        raise ConvertError(f"{path} is not a file; pass a .gguf file (or an HF model directory without .gguf)")
    check_gguf_header(path)
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, struct/np errors, ... on damaged files
        raise ConvertError(f"{path} is not a readable GGUF file ({exc}); re-download or re-export it") from None


def metadata(reader, with_arrays: tuple[str, ...] = ()) -> dict[str, Any]:
    """Scalar metadata (and the named arrays) as plain Python values."""
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if len(f.types) > 1 and f.types[0].name == "ARRAY" and key not in with_arrays:
            out[key] = len(f.data)  # big arrays (tokens, merges) only when asked for
            continue
        try:
            out[key] = f.contents()
        except Exception:  # noqa: BLE001  an odd field we do not need should not stop the import
            continue
    return out


def _damaged(source: str, problem: str) -> ConvertError:
    return ConvertError(f"{source}: {problem}; the file is damaged: re-download or re-export it")


def _count(meta: dict[str, Any], key: str, source: str, default: int | None = None) -> int:
    """A size from the metadata: present (or defaulted) and a positive integer, never 0 or a string."""
    value = meta.get(key, default)
    if value is None:
        raise _damaged(source, f"missing metadata '{key}'")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _damaged(source, f"metadata '{key}' must be a positive integer, got {value!r}")
    return value


def _f32(meta: dict[str, Any], key: str, source: str, default: float) -> float:
    """A float32 metadata value as the decimal it was written from (9.99999974e-06 -> 1e-05)."""
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise _damaged(source, f"metadata '{key}' must be a positive number, got {value!r}")
    return float(f"{float(value):.7g}")


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str], source: str) -> ModelConfig:
    """Our ModelConfig from `<arch>.*` metadata (an architecture in core.architecture.FORMATS); refuses what our
    model does not implement, and sizes that are missing, zero, not integers, or more than the file's tensors
    can hold."""
    arch = meta.get("general.architecture")
    if arch not in FORMATS:
        known = ", ".join(f"'{name}'" for name in FORMATS)
        raise ConvertError(f"{source}: unsupported GGUF architecture '{arch}'; only {known} models can be imported")
    experts = meta.get(f"{arch}.expert_count", 0)
    if not isinstance(experts, int) or experts > 0:
        raise ConvertError(f"{source}: mixture-of-experts models are not supported ({arch}.expert_count > 0)")
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none") or "rope_freqs.weight" in tensor_names:
        raise ConvertError(f"{source}: RoPE scaling '{scaling or 'rope_freqs'}' is not implemented; only plain RoPE")
    biases = sorted(n for n in tensor_names if n.endswith(".bias"))
    if biases:
        raise ConvertError(f"{source}: tensor '{biases[0]}' is a bias; this model has no biases")
    d_model = _count(meta, f"{arch}.embedding_length", source)
    n_heads = _count(meta, f"{arch}.attention.head_count", source)
    head_dim = _count(meta, f"{arch}.attention.key_length", source, d_model // n_heads or 1)
    if _count(meta, f"{arch}.attention.value_length", source, head_dim) != head_dim:
        raise ConvertError(f"{source}: key and value head sizes differ; not supported")
    if _count(meta, f"{arch}.rope.dimension_count", source, head_dim) != head_dim:
        raise ConvertError(f"{source}: partial rotary embeddings (rope.dimension_count != head dim) are not supported")
    tokens = meta.get("tokenizer.ggml.tokens")  # the list, or its length when not read in full
    n_tokens = len(tokens) if isinstance(tokens, list) else tokens
    n_layers = _count(meta, f"{arch}.block_count", source)
    layer_tensors = sum(1 for n in tensor_names if n.startswith("blk."))
    if n_layers > layer_tensors:  # before anything is sized by it: each layer holds several tensors
        raise _damaged(source, f"metadata says {n_layers:,} layers but the file holds {layer_tensors} layer tensors")
    cfg = ModelConfig(
        vocab_size=_count(meta, f"{arch}.vocab_size", source, n_tokens),
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=_count(meta, f"{arch}.attention.head_count_kv", source, n_heads),
        d_ff=_count(meta, f"{arch}.feed_forward_length", source),
        head_dim=0 if head_dim * n_heads == d_model else head_dim,
        rope_theta=_f32(meta, f"{arch}.rope.freq_base", source, 10000.0),
        norm_eps=_f32(meta, f"{arch}.attention.layer_norm_rms_epsilon", source, 1e-5),
        max_seq_len=_count(meta, f"{arch}.context_length", source, 2048),
        tie_embeddings="output.weight" not in tensor_names,
        **implied_by(arch),
    )
    return check_model_config(cfg, source)


INTEGER_TYPES = ("I8", "I16", "I32", "I64")


def read_gguf_weights(reader, cfg: ModelConfig, source: str) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32 under its HF name, q/k rows back in HF order, verified like an HF
    import: names and shapes from the tensor table before anything is dequantized, float types only,
    finite values after dequantization."""
    from gguf.quants import dequantize

    expected = parameter_shapes(cfg)
    by_gguf = gguf_names(cfg)
    tensors = {t.name: t for t in reader.tensors}
    unknown = sorted(set(tensors) - set(by_gguf))
    if unknown:
        raise ConvertError(f"{source}: unexpected tensor '{unknown[0]}' ({len(unknown)} unexpected) for a llama model")
    missing = [g for g in by_gguf if g not in tensors]
    if missing:
        raise ConvertError(f"{source}: missing tensor '{missing[0]}' ({len(missing)} missing); the file is incomplete")
    for gguf_name, name in by_gguf.items():
        t = tensors[gguf_name]
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if shape != expected[name]:
            raise ConvertError(
                f"{source}: tensor '{gguf_name}' has shape {shape}, the metadata implies {expected[name]}; "
                f"the file is damaged: re-download or re-export it"
            )
        if t.tensor_type.name in INTEGER_TYPES:
            raise ConvertError(
                f"{source}: tensor '{gguf_name}' is {t.tensor_type.name}, not floating point or quantized weights; "
                f"re-export the model"
            )
    weights: dict[str, np.ndarray] = {}
    for gguf_name, name in progress(by_gguf.items(), desc="dequantize", unit="tensor"):
        t = tensors[gguf_name]
        try:
            value = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        except Exception as exc:  # NotImplementedError / QuantError for types gguf cannot dequantize, damaged data
            raise ConvertError(f"{source}: cannot dequantize '{gguf_name}' ({t.tensor_type.name}: {exc})") from None
        if tuple(value.shape) != expected[name]:
            raise ConvertError(
                f"{source}: tensor '{gguf_name}' has shape {tuple(value.shape)}, the metadata implies {expected[name]}"
            )
        if not np.isfinite(value).all():
            raise ConvertError(
                f"{source}: tensor '{gguf_name}' holds NaN or inf after dequantization; "
                f"the file is damaged: re-download or re-export it"
            )
        heads = qk_heads(cfg, name)
        weights[name] = unpermute_qk(value, heads) if heads else value
    return weights


def token_id(meta: dict[str, Any], key: str, source: str, vocab_size: int) -> int | None:
    """A special token id from the metadata: absent, or an integer below vocab_size."""
    value = meta.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size):
        raise _damaged(source, f"metadata '{key}' is {value!r}, not a token id below {vocab_size}")
    return value


def vocab_from_gguf(meta: dict[str, Any], source: str, vocab_size: int) -> GGUFVocab:
    """The tokenizer metadata, checked (types, one token per embedding row, ids in range) before any weight
    is dequantized."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ConvertError(
            f"{source}: tokenizer type '{model}' is not a byte-level BPE; "
            f"pass --tokenizer DIR with the model's original tokenizer files"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise _damaged(source, "tokenizer.ggml.tokens is missing or not a list of strings")
    if len(tokens) != vocab_size:
        raise _damaged(source, f"{len(tokens)} tokens but vocab_size {vocab_size}")
    types = meta.get("tokenizer.ggml.token_type")
    types = [1] * len(tokens) if types is None else types
    if not isinstance(types, list) or len(types) != len(tokens) or not all(isinstance(t, int) for t in types):
        raise _damaged(source, "tokenizer.ggml.token_type is not one integer per token")
    merges = meta.get("tokenizer.ggml.merges") or []
    if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
        raise _damaged(source, "tokenizer.ggml.merges is not a list of strings")

    def optional_id(key: str) -> int | None:
        return token_id(meta, key, source, vocab_size)

    template = meta.get("tokenizer.chat_template")
    return GGUFVocab(
        tokens=tokens,
        token_types=types,
        merges=merges,
        pre=str(meta.get("tokenizer.ggml.pre", "default")),
        bos_token_id=optional_id("tokenizer.ggml.bos_token_id"),
        eos_token_id=optional_id("tokenizer.ggml.eos_token_id"),
        unk_token_id=optional_id("tokenizer.ggml.unknown_token_id"),
        pad_token_id=optional_id("tokenizer.ggml.padding_token_id"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=template if isinstance(template, str) else None,
    )


TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")


def read_gguf(path: str | Path) -> tuple[Any, dict[str, Any], ModelConfig]:
    """(reader, metadata incl. tokenizer arrays, config) of a llama GGUF file; no tensor read yet."""
    reader = open_reader(path)
    meta = metadata(reader, with_arrays=TOKENIZER_ARRAYS)
    return reader, meta, config_from_gguf(meta, {t.name for t in reader.tensors}, str(path))


def load_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any]]:
    """(config, float32 weights by HF name, metadata incl. tokenizer arrays) of a llama GGUF file."""
    reader, meta, cfg = read_gguf(path)
    return cfg, read_gguf_weights(reader, cfg, str(path)), meta


def import_gguf(
    src: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    tokenizer: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write our checkpoint for a llama GGUF file (weights dequantized to `dtype`). Everything is read and
    verified (header, config, tokenizer, every tensor) before OUT is written."""
    out = check_output(out, force, source=src)
    reader, meta, cfg = read_gguf(src)
    vocab = vocab_from_gguf(meta, str(src), cfg.vocab_size) if tokenizer is None else None
    with tempfile.TemporaryDirectory() as tmp:
        if vocab is not None:
            try:
                tok_dir = write_tokenizer_dir(vocab, Path(tmp) / "tokenizer")
            except ConvertError as exc:  # name the file whose tokenizer metadata is unusable
                raise ConvertError(f"{src}: {exc}") from None
        else:
            tok_dir = prepare_tokenizer(tokenizer_dir_arg(tokenizer), Path(tmp) / "tokenizer", cfg.vocab_size)
        weights = cast_weights(read_gguf_weights(reader, cfg, str(src)), dtype, src)
        bos = token_id(meta, "tokenizer.ggml.bos_token_id", str(src), cfg.vocab_size)
        eos = token_id(meta, "tokenizer.ggml.eos_token_id", str(src), cfg.vocab_size)
        return write_imported(out, weights, cfg, src, tok_dir, bos, eos)
