"""Our ModelConfig <-> a Hugging Face `LlamaConfig` dict (the `config.json` every tool reads)."""

from __future__ import annotations

from typing import Any

from core.config import ConfigError, ModelConfig

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


def from_hf_config(hf: dict[str, Any]) -> ModelConfig:
    """Read a Llama `config.json`; refuse features this model does not implement."""
    model_type = hf.get("model_type")
    if model_type != "llama":
        raise ConfigError(f"unsupported model_type '{model_type}': only Llama-architecture models can be loaded")
    for key, (allowed, what) in _UNSUPPORTED_HF.items():
        if key in hf and hf[key] not in (allowed, None):
            raise ConfigError(f"unsupported {key}={hf[key]!r}: this model has no {what}")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for rope_type in (rope.get("rope_type"), scaling.get("rope_type"), scaling.get("type")):
        if rope_type not in (None, "default"):
            raise ConfigError(f"unsupported RoPE scaling '{rope_type}': only plain RoPE is implemented")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    n_heads = int(hf["num_attention_heads"])
    d_model = int(hf["hidden_size"])
    head_dim = int(hf.get("head_dim") or d_model // n_heads)
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        d_ff=int(hf["intermediate_size"]),
        head_dim=0 if head_dim * n_heads == d_model else head_dim,
        rope_theta=float(theta),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),  # HF default
        init_std=float(hf.get("initializer_range", 0.02)),
    )
