"""A llama.cpp GGUF file -> our checkpoint: dequantized weights under HF names, config, tokenizer.

Three things differ from an HF directory and are undone here: tensor names (`blk.N.attn_q`),
llama.cpp's interleaved-RoPE row order in q/k (`unpermute_qk`), and the tokenizer, which GGUF
keeps as metadata (`convert.gguf_tokenizer`). Anything llama.cpp's `llama` architecture can hold
that our model does not compute (RoPE scaling, biases, experts, partial rotary) is refused.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from convert.common import (
    ConvertError,
    cast_weights,
    check_model_config,
    check_output,
    tokenizer_dir_arg,
)
from convert.gguf_layout import gguf_names, qk_heads, unpermute_qk
from convert.gguf_tokenizer import GGUFVocab, write_tokenizer_dir
from core.checkpoint import save_checkpoint
from core.config import ModelConfig
from core.weights import parameter_shapes


def open_reader(path: str | Path):
    """A GGUFReader, or one clear line when the file is missing, not GGUF, or truncated."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"GGUF file not found: {path}")
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


def _f32(value: float) -> float:
    """A float32 metadata value as the decimal it was written from (9.99999974e-06 -> 1e-05)."""
    return float(f"{float(value):.7g}")


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str], source: str) -> ModelConfig:
    """Our ModelConfig from `llama.*` metadata; refuses what our model does not implement."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ConvertError(f"{source}: unsupported GGUF architecture '{arch}'; only 'llama' models can be imported")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise ConvertError(f"{source}: missing metadata 'llama.{key}'; the file is incomplete")
        return value

    if int(meta.get("llama.expert_count", 0) or 0) > 0:
        raise ConvertError(f"{source}: mixture-of-experts models are not supported (llama.expert_count > 0)")
    scaling = meta.get("llama.rope.scaling.type")
    if scaling not in (None, "none") or "rope_freqs.weight" in tensor_names:
        raise ConvertError(f"{source}: RoPE scaling '{scaling or 'rope_freqs'}' is not implemented; only plain RoPE")
    biases = sorted(n for n in tensor_names if n.endswith(".bias"))
    if biases:
        raise ConvertError(f"{source}: tensor '{biases[0]}' is a bias; this model has no biases")
    d_model, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(meta.get("llama.attention.key_length") or d_model // n_heads)
    if int(meta.get("llama.attention.value_length") or head_dim) != head_dim:
        raise ConvertError(f"{source}: key and value head sizes differ; not supported")
    if int(meta.get("llama.rope.dimension_count") or head_dim) != head_dim:
        raise ConvertError(f"{source}: partial rotary embeddings (rope.dimension_count != head dim) are not supported")
    tokens = meta.get("tokenizer.ggml.tokens")  # the list, or its length when not read in full
    vocab = meta.get("llama.vocab_size") or (len(tokens) if isinstance(tokens, list) else tokens)
    cfg = ModelConfig(
        vocab_size=int(vocab or 0),
        n_layers=int(get("block_count")),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=int(meta.get("llama.attention.head_count_kv") or n_heads),
        d_ff=int(get("feed_forward_length")),
        head_dim=0 if head_dim * n_heads == d_model else head_dim,
        rope_theta=_f32(meta.get("llama.rope.freq_base", 10000.0)),
        norm_eps=_f32(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_seq_len=int(meta.get("llama.context_length", 2048)),
        tie_embeddings="output.weight" not in tensor_names,
    )
    return check_model_config(cfg, source)


def read_gguf_weights(reader, cfg: ModelConfig, source: str) -> dict[str, np.ndarray]:
    """Dequantize every tensor to float32 under its HF name, q/k rows back in HF order."""
    from gguf.quants import dequantize

    expected = parameter_shapes(cfg)
    by_gguf = gguf_names(expected)
    tensors = {t.name: t for t in reader.tensors}
    unknown = sorted(set(tensors) - set(by_gguf))
    if unknown:
        raise ConvertError(f"{source}: unexpected tensor '{unknown[0]}' ({len(unknown)} unexpected) for a llama model")
    missing = [g for g in by_gguf if g not in tensors]
    if missing:
        raise ConvertError(f"{source}: missing tensor '{missing[0]}' ({len(missing)} missing); the file is incomplete")
    weights: dict[str, np.ndarray] = {}
    for gguf_name, t in tqdm(tensors.items(), desc="dequantize", unit="tensor", disable=None):
        name = by_gguf[gguf_name]
        try:
            value = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        except Exception as exc:  # NotImplementedError / QuantError for types gguf cannot dequantize, damaged data
            raise ConvertError(f"{source}: cannot dequantize '{gguf_name}' ({t.tensor_type.name}: {exc})") from None
        if tuple(value.shape) != expected[name]:
            raise ConvertError(
                f"{source}: tensor '{gguf_name}' has shape {tuple(value.shape)}, the metadata implies {expected[name]}"
            )
        heads = qk_heads(cfg, name)
        weights[name] = unpermute_qk(value, heads) if heads else value
    return weights


def vocab_from_gguf(meta: dict[str, Any], source: str) -> GGUFVocab:
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ConvertError(
            f"{source}: tokenizer type '{model}' is not a byte-level BPE; "
            f"pass --tokenizer DIR with the model's original tokenizer files"
        )

    def optional_int(key: str) -> int | None:
        value = meta.get(key)
        return int(value) if value is not None else None

    return GGUFVocab(
        tokens=list(meta["tokenizer.ggml.tokens"]),
        token_types=[int(t) for t in meta.get("tokenizer.ggml.token_type") or [1] * len(meta["tokenizer.ggml.tokens"])],
        merges=list(meta.get("tokenizer.ggml.merges") or []),
        pre=str(meta.get("tokenizer.ggml.pre", "default")),
        bos_token_id=optional_int("tokenizer.ggml.bos_token_id"),
        eos_token_id=optional_int("tokenizer.ggml.eos_token_id"),
        unk_token_id=optional_int("tokenizer.ggml.unknown_token_id"),
        pad_token_id=optional_int("tokenizer.ggml.padding_token_id"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def load_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any]]:
    """(config, float32 weights by HF name, metadata incl. tokenizer arrays) of a llama GGUF file."""
    reader = open_reader(path)
    arrays = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    meta = metadata(reader, with_arrays=arrays)
    cfg = config_from_gguf(meta, {t.name for t in reader.tensors}, str(path))
    return cfg, read_gguf_weights(reader, cfg, str(path)), meta


def import_gguf(
    src: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    tokenizer: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write our checkpoint for a llama GGUF file (weights dequantized to `dtype`)."""
    out = check_output(out, force)
    cfg, weights, meta = load_gguf(src)
    weights = cast_weights(weights, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer is None:
            vocab = vocab_from_gguf(meta, str(src))
            if len(vocab.tokens) != cfg.vocab_size:
                raise ConvertError(
                    f"{src}: {len(vocab.tokens)} tokens but vocab_size {cfg.vocab_size}; file is damaged"
                )
            tokenizer = write_tokenizer_dir(vocab, Path(tmp) / "tokenizer")
        else:
            tokenizer = tokenizer_dir_arg(tokenizer)
        bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
        state = {"step": 0, "tokens_seen": 0, "imported_from": str(Path(src).resolve()), "backend": "convert"}
        return save_checkpoint(
            out,
            weights,
            cfg,
            tokenizer_dir=tokenizer,
            trainer_state=state,
            bos_token_id=None if bos is None else int(bos),
            eos_token_id=None if eos is None else int(eos),
        )
