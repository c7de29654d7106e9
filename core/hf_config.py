"""Our ModelConfig <-> a Hugging Face `LlamaConfig` dict (the `config.json` every tool reads)."""

from __future__ import annotations

import math
from typing import Any

from tinyllama.core.config import ConfigError, ModelConfig, validate_model

_UNSUPPORTED_HF = {
    "attention_bias": (False, "attention biases"),
    "mlp_bias": (False, "MLP biases"),
    "hidden_act": ("silu", "activations other than silu"),
}


def to_hf_config(
    model: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None, dtype: str = "float32"
) -> dict[str, Any]:
    """The `config.json` that transformers, mlx_lm and llama.cpp's converter read."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": model.vocab_size,
        "hidden_size": model.d_model,
        "intermediate_size": model.d_ff,
        "num_hidden_layers": model.n_layers,
        "num_attention_heads": model.n_heads,
        "num_key_value_heads": model.n_kv_heads,
        "head_dim": model.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": model.max_seq_len,
        "rms_norm_eps": model.norm_eps,
        # mlx-lm reads only the top-level key, transformers 5 only rope_parameters: write both.
        "rope_theta": model.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_theta},
        "rope_scaling": None,
        "tie_word_embeddings": model.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": model.init_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype,
        "dtype": dtype,
        "use_cache": True,
    }


def _positive_int(hf: dict[str, Any], key: str, default: Any = None) -> int:
    value = hf.get(key, default)
    if value is None:
        raise ConfigError(f"'{key}' is missing")
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or value <= 0:
        raise ConfigError(f"'{key}' must be a positive integer, got {value!r}")
    return int(value)


def _number(hf: dict[str, Any], key: str, default: float) -> float:
    value = hf.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"'{key}' must be a finite number, got {value!r}")
    return float(value)


def _mapping(hf: dict[str, Any], key: str) -> dict[str, Any]:
    value = hf.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"'{key}' must be an object or null, got {type(value).__name__} {value!r}")
    return value


def from_hf_config(hf: dict[str, Any]) -> ModelConfig:
    """Read a Llama `config.json`; refuse features this model does not implement and any missing, non-numeric
    or inconsistent size (so nothing is allocated from a damaged file). `auto_map` and other code-loading
    keys are ignored: only the fields below are read."""
    model_type = hf.get("model_type")
    if model_type != "llama":
        raise ConfigError(f"unsupported model_type '{model_type}': only Llama-architecture models can be loaded")
    for key, (allowed, what) in _UNSUPPORTED_HF.items():
        if key in hf and hf[key] not in (allowed, None):
            raise ConfigError(f"unsupported {key}={hf[key]!r}: this model has no {what}")
    rope, scaling = _mapping(hf, "rope_parameters"), _mapping(hf, "rope_scaling")
    for rope_type in (rope.get("rope_type"), scaling.get("rope_type"), scaling.get("type")):
        if rope_type not in (None, "default"):
            raise ConfigError(f"unsupported RoPE scaling '{rope_type}': only plain RoPE is implemented")
    theta = _number(rope, "rope_theta", _number(hf, "rope_theta", 10000.0))
    n_heads = _positive_int(hf, "num_attention_heads")
    d_model = _positive_int(hf, "hidden_size")
    head_dim = _positive_int(hf, "head_dim") if hf.get("head_dim") else d_model // n_heads
    cfg = ModelConfig(
        vocab_size=_positive_int(hf, "vocab_size"),
        n_layers=_positive_int(hf, "num_hidden_layers"),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=_positive_int(hf, "num_key_value_heads", n_heads),
        d_ff=_positive_int(hf, "intermediate_size"),
        head_dim=0 if head_dim * n_heads == d_model else head_dim,
        rope_theta=theta,
        norm_eps=_number(hf, "rms_norm_eps", 1e-6),
        max_seq_len=_positive_int(hf, "max_position_embeddings", 2048),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),  # HF default
        init_std=_number(hf, "initializer_range", 0.02),
    )
    validate_model(cfg)
    return cfg
