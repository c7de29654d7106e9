"""The architecture, declared once: every parameter's name, shape, init and role, and what file formats can
express it.

mlx_model/model.py and torch_model/model.py compute the model; this file says what it holds, for everything
that needs to know without running it: the initial weights (drawn here in numpy, so both backends start from
the same numbers), the parameter count and FLOPs, which weights Muon and weight decay take, the optimizer
state a checkpoint holds, the checks on a loaded checkpoint, and the exporters. A new parameter is one entry
in `block_parameters` (or `outer_parameters`); tests/test_architecture.py checks that both model files create
exactly the declared names and shapes. Names are Hugging Face Llama names, so a state dict is an HF one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tinyllama.core.config import ModelConfig

INITS = ("ones", "zeros", "normal", "residual")


@dataclass(frozen=True)
class Param:
    """One parameter: its shape; its init (`ones`: a norm's gain; `zeros`; `normal`: N(0, init_std);
    `residual`: N(0, init_std / sqrt(2 n_layers)), a projection back into the residual stream, so its variance
    does not grow with depth); `matrix`: a hidden matrix of a block (a matmul in the FLOP count, Muon's when
    training.optimizer is muon); `gguf`: llama.cpp's name for it."""

    shape: tuple[int, ...]
    init: str
    gguf: str
    matrix: bool = False

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def decayed(self) -> bool:
        """AdamW's weight decay applies to 2-D weights (matrices, embeddings), never to norm gains."""
        return len(self.shape) >= 2


def block_parameters(cfg: ModelConfig) -> dict[str, Param]:
    """One transformer block's parameters, named below `model.layers.{i}.`, in the order the models create them."""
    d, q, kv = cfg.d_model, cfg.n_heads * cfg.resolved_head_dim, cfg.n_kv_heads * cfg.resolved_head_dim
    gated = cfg.mlp == "swiglu"  # relu2: up and down only
    residual = "zeros" if cfg.zero_init_residual else "residual"  # the projections back into the stream
    return {
        "input_layernorm.weight": Param((d,), "ones", "attn_norm"),
        "self_attn.q_proj.weight": Param((q, d), "normal", "attn_q", matrix=True),
        "self_attn.k_proj.weight": Param((kv, d), "normal", "attn_k", matrix=True),
        "self_attn.v_proj.weight": Param((kv, d), "normal", "attn_v", matrix=True),
        "self_attn.o_proj.weight": Param((d, q), residual, "attn_output", matrix=True),
        **(
            {
                "self_attn.q_norm.weight": Param((cfg.resolved_head_dim,), "ones", "attn_q_norm"),
                "self_attn.k_norm.weight": Param((cfg.resolved_head_dim,), "ones", "attn_k_norm"),
            }
            if cfg.qk_norm
            else {}
        ),
        "post_attention_layernorm.weight": Param((d,), "ones", "ffn_norm"),
        **({"mlp.gate_proj.weight": Param((cfg.d_ff, d), "normal", "ffn_gate", matrix=True)} if gated else {}),
        "mlp.up_proj.weight": Param((cfg.d_ff, d), "normal", "ffn_up", matrix=True),
        "mlp.down_proj.weight": Param((d, cfg.d_ff), residual, "ffn_down", matrix=True),
    }


def outer_parameters(cfg: ModelConfig) -> dict[str, Param]:
    """The parameters outside the blocks: the token embedding, the final norm and (untied) the output head."""
    outer = {
        "model.embed_tokens.weight": Param((cfg.vocab_size, cfg.d_model), "normal", "token_embd"),
        "model.norm.weight": Param((cfg.d_model,), "ones", "output_norm"),
    }
    if not cfg.tie_embeddings:
        outer["lm_head.weight"] = Param((cfg.vocab_size, cfg.d_model), "normal", "output")
    return outer


def head_name(cfg: ModelConfig) -> str:
    """The parameter that projects onto the vocabulary: `lm_head.weight`, or the token embedding when tied."""
    return "model.embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight"


def ignored_layers(cfg: ModelConfig) -> tuple[str, ...]:
    """Layers a stored model may hold that this config does not use: a tied model's `lm_head`, which some
    exporters save anyway (its tensors are skipped on load, whatever they hold)."""
    return ("lm_head",) if cfg.tie_embeddings else ()


def parameters(cfg: ModelConfig) -> dict[str, Param]:
    """Every parameter by HF name: the embedding, each block's, the final norm, the head."""
    outer, block = outer_parameters(cfg), block_parameters(cfg)
    named = {"model.embed_tokens.weight": outer.pop("model.embed_tokens.weight")}
    for i in range(cfg.n_layers):
        named.update({f"model.layers.{i}.{name}": param for name, param in block.items()})
    return named | outer


def parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {name: param.shape for name, param in parameters(cfg).items()}


def tensor_count(cfg: ModelConfig) -> int:
    """How many tensors the model has, without listing them."""
    return cfg.n_layers * len(block_parameters(cfg)) + len(outer_parameters(cfg))


def count_parameters(cfg: ModelConfig, include_embeddings: bool = True, muon_only: bool = False) -> int:
    """The parameter count from one block's declaration times the layers: known without listing every tensor,
    so a damaged config.json that claims a billion layers is measured (and refused) before anything is
    allocated for it. `muon_only`: only the blocks' matrices (Muon keeps one fp32 buffer each, AdamW two)."""
    block = block_parameters(cfg).values()
    in_blocks = cfg.n_layers * sum(p.size for p in block if p.matrix or not muon_only)
    if muon_only:
        return in_blocks
    outer = outer_parameters(cfg)
    embeddings = outer["model.embed_tokens.weight"].size if not include_embeddings else 0
    return in_blocks + sum(p.size for p in outer.values()) - embeddings


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), as in PaLM / nanoGPT: 6 x matmul weights + attention.
    The blocks' matrices and the LM head (tied or not) are matmuls; the embedding lookup is not."""
    matrices = cfg.n_layers * sum(p.size for p in block_parameters(cfg).values() if p.matrix)
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.resolved_head_dim * seq_len
    return 6 * (matrices + cfg.vocab_size * cfg.d_model) + attention


def optimizer_roles(cfg: ModelConfig, optimizer: str) -> dict[str, str]:
    """Who updates each parameter: `muon` (training.optimizer muon: the blocks' matrices; Muon's orthogonalised
    update suits hidden matrices, not lookup tables or gains), `decay` (AdamW with weight decay: the other 2-D
    weights) or `plain` (AdamW without: norm gains). The one rule both backends and the checkpoint follow."""
    return {
        name: "muon" if optimizer == "muon" and p.matrix else "decay" if p.decayed else "plain"
        for name, p in parameters(cfg).items()
    }


def moment_names(name: str, role: str) -> tuple[str, ...]:
    """The neutral optimizer-state tensors of one parameter: "<param>.momentum_buffer" for a Muon weight,
    "<param>.exp_avg" and "<param>.exp_avg_sq" for an AdamW one (fp32, the parameter's shape)."""
    return (f"{name}.momentum_buffer",) if role == "muon" else (f"{name}.exp_avg", f"{name}.exp_avg_sq")


def moment_shapes(cfg: ModelConfig, optimizer: str) -> dict[str, tuple[int, ...]]:
    """Every tensor optimizer.safetensors holds for `training.optimizer` = `optimizer`, with its shape."""
    shapes = parameter_shapes(cfg)
    return {
        moment: shapes[name]
        for name, role in optimizer_roles(cfg, optimizer).items()
        for moment in moment_names(name, role)
    }


def init_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """The initial weights, each as its declaration says, drawn in declaration order from one seeded
    generator (GPT-2 style: N(0, init_std), residual projections scaled by 1/sqrt(2 n_layers), norms at 1)."""
    rng = np.random.default_rng(seed)
    std = {"normal": cfg.init_std, "residual": cfg.init_std / math.sqrt(2 * cfg.n_layers)}
    weights: dict[str, np.ndarray] = {}
    for name, p in parameters(cfg).items():
        if p.init in std:
            weights[name] = (rng.standard_normal(p.shape, dtype=np.float32) * std[p.init]).astype(np.float32)
        else:
            weights[name] = (np.ones if p.init == "ones" else np.zeros)(p.shape, dtype=np.float32)
    return weights


def check_weights(cfg: ModelConfig, weights: dict[str, np.ndarray], source: str = "weights") -> None:
    """Raise ValueError naming the first missing, unexpected or mis-shaped tensor."""
    check_shapes(cfg, {name: tuple(value.shape) for name, value in weights.items()}, source)


def check_shapes(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], source: str = "weights") -> None:
    """`check_weights` on names and shapes alone (e.g. read from a file header before any tensor)."""
    expected = parameter_shapes(cfg)
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise ValueError(f"{source}: missing tensor '{missing[0]}' ({len(missing)} missing); is this a Llama model?")
    extra = [k for k in shapes if k not in expected]
    if extra:
        raise ValueError(f"{source}: unexpected tensor '{extra[0]}' ({len(extra)} unexpected) for this config")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ValueError(f"{source}: tensor '{name}' has shape {tuple(shapes[name])}, config expects {shape}")


# ------------------------------------------------------------------------------------------ file formats


@dataclass(frozen=True)
class Format:
    """An architecture other tools know (transformers' and mlx_lm's `model_type`, llama.cpp's GGUF
    `general.architecture`): transformers' class, and whether llama.cpp stores q/k rows permuted for its
    interleaved RoPE (llama) or as they are (rotate-half, NEOX)."""

    hf_class: str
    gguf_permutes_qk: bool


FORMATS = {
    "llama": Format("LlamaForCausalLM", gguf_permutes_qk=True),
    "qwen3": Format("Qwen3ForCausalLM", gguf_permutes_qk=False),  # Llama + per-head q/k RMSNorm before RoPE
}

# The switches beyond a plain Llama: (key, its plain-Llama value, the architecture in FORMATS that is a Llama
# with it switched, and the value that architecture implies; None, None when no format has the switch: only
# our own tools run such a model, and the exporters refuse it naming the key).
SWITCHES: tuple[tuple[str, object, str | None, object], ...] = (
    ("qk_norm", False, "qwen3", True),
    ("mlp", "swiglu", None, None),
    ("logit_softcap", 0.0, None, None),
)

OWN_MODEL_TYPE = "tiny_llama"  # config.json's model_type for a model no other tool computes


def switched(cfg: ModelConfig) -> dict[str, object]:
    """The switches `cfg` sets away from plain Llama, key -> value."""
    return {key: getattr(cfg, key) for key, plain, _, _ in SWITCHES if getattr(cfg, key) != plain}


def architecture(cfg: ModelConfig) -> str | None:
    """The architecture in FORMATS that computes this model exactly (plain: llama); None when a switch has none,
    has another value than that architecture's, or two switches name different ones."""
    names = {
        arch if getattr(cfg, key) == value else None
        for key, plain, arch, value in SWITCHES
        if getattr(cfg, key) != plain
    }
    if not names:
        return "llama"
    return names.pop() if len(names) == 1 and None not in names else None


def no_format_for(cfg: ModelConfig) -> str:
    """Why no other tool can run `cfg` ('model.mlp relu2, model.logit_softcap 30.0'), '' when one can."""
    if architecture(cfg) is not None:
        return ""
    return ", ".join(f"model.{key} {value}" for key, value in switched(cfg).items())


def implied_by(arch: str) -> dict[str, object]:
    """The switches an architecture in FORMATS implies (llama: none), for reading its config.json or GGUF."""
    return {key: value for key, _, name, value in SWITCHES if name == arch}
