"""Our ModelConfig <-> a Hugging Face `config.json` (what transformers, mlx_lm and llama.cpp's converter read).

A plain Llama is written as `llama`; a switch that another architecture computes is written as that one (its
`model_type`, core.architecture.FORMATS); a model no other tool computes gets our own model_type with its
switches spelled out, so transformers and mlx_lm refuse it instead of running it wrong."""

from __future__ import annotations

import math
from typing import Any

from tinyllama.core.architecture import FORMATS, OWN_MODEL_TYPE, SWITCHES, architecture, implied_by
from tinyllama.core.config import ConfigError, ModelConfig, coerce_model_key, validate_model

OWN_CLASS = "TinyLlamaForCausalLM"  # no transformers class has this name: it refuses such a model by design

_UNSUPPORTED_HF = {
    "attention_bias": (False, "attention biases"),
    "mlp_bias": (False, "MLP biases"),
    "hidden_act": ("silu", "activations other than silu"),
    "use_sliding_window": (False, "sliding-window attention"),
}


def to_hf_config(
    model: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None, dtype: str = "float32"
) -> dict[str, Any]:
    """The `config.json` that transformers, mlx_lm and llama.cpp's converter read."""
    arch = architecture(model)
    own = {} if arch is not None else {key: getattr(model, key) for key, *_ in SWITCHES}  # read back by from_hf_config
    return {
        "architectures": [FORMATS[arch].hf_class if arch else OWN_CLASS],
        "model_type": arch or OWN_MODEL_TYPE,
        **own,
        **({"zero_init_residual": True} if model.zero_init_residual else {}),  # how it started: resume compares it
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
    if model_type not in FORMATS and model_type != OWN_MODEL_TYPE:
        known = ", ".join(FORMATS)
        raise ConfigError(f"unsupported model_type '{model_type}': only these architectures can be loaded: {known}")
    for key, (allowed, what) in _UNSUPPORTED_HF.items():
        if key in hf and hf[key] not in (allowed, None):
            raise ConfigError(f"unsupported {key}={hf[key]!r}: this model has no {what}")
    layer_types = hf.get("layer_types") or []
    if not isinstance(layer_types, list) or any(kind != "full_attention" for kind in layer_types):
        raise ConfigError(f"unsupported layer_types {layer_types!r}: only full attention in every layer is implemented")
    if model_type == OWN_MODEL_TYPE:
        switches = {key: hf[key] for key, *_ in SWITCHES if key in hf}
    else:
        switches = implied_by(model_type)
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
        zero_init_residual=hf.get("zero_init_residual") is True,
    )
    for key, value in switches.items():
        setattr(cfg, key, coerce_model_key(key, value))
    validate_model(cfg)
    return cfg
