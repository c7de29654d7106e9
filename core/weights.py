"""Parameter names, shapes and the initial weights, shared by both backends.

The names are exactly Hugging Face Llama names, so a state dict is the HF state dict. The
initial weights are drawn here, in numpy, so MLX and torch start a run from the very same
numbers for the same seed (and a cross-backend test needs no conversion to agree).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

import numpy as np

from tinyllama.core.config import ModelConfig

DTYPES = ("float32", "bfloat16", "float16")  # the weight dtypes a model is stored and run in
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16"}


DTYPE_SPELLINGS = {"float32": "float32|fp32|f32", "bfloat16": "bfloat16|bf16", "float16": "float16|fp16|f16"}


def canonical_dtype(name: str) -> str:
    """`bf16` -> `bfloat16`, `fp32` -> `float32`, ...; names outside DTYPES are returned unchanged."""
    return DTYPE_ALIASES.get(name.lower(), name.lower())


def dtype_arg(allowed: tuple[str, ...] = DTYPES, extra: tuple[str, ...] = ()) -> Callable[[str], str]:
    """An argparse `type` for --dtype: every spelling of the `allowed` dtypes becomes the canonical name
    (`bf16` -> `bfloat16`); `extra` names (`auto`, `q8_0`) pass as they are; anything else is one line."""
    choices = [DTYPE_SPELLINGS[name] for name in allowed] + list(extra)

    def parse(text: str) -> str:
        name = canonical_dtype(text.strip())
        if name in allowed or name in extra:
            return name
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; use one of {', '.join(choices)}")

    parse.__name__ = "dtype"  # argparse names the type in its messages
    return parse


def numpy_dtype(name: str) -> np.dtype:
    """A weight dtype name as a numpy dtype. numpy has no bf16: it is ml_dtypes' (what safetensors' numpy API
    reads and writes), imported here on first need only, since the import alone takes ~1.2 s."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def weights_dtype(weights: dict[str, np.ndarray]) -> str:
    """The dtype most of the weights' elements use, by name (float32 / bfloat16 / float16 / e.g. int8)."""
    counts: dict[str, int] = {}
    for value in weights.values():
        name = value.dtype.name
        counts[name] = counts.get(name, 0) + value.size
    return max(counts, key=counts.get) if counts else "float32"


def runtime_dtype(weights: dict[str, np.ndarray]) -> str:
    """The dtype a model loaded from `weights` computes in by default: bfloat16 weights stay bfloat16 (a
    training dtype); everything else runs in float32 (fp16's narrow range is no training dtype here)."""
    return "bfloat16" if weights_dtype(weights) == "bfloat16" else "float32"


def parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the model, in the order both model files create them."""
    hd = cfg.resolved_head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.d_model)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (cfg.d_model,)
        shapes[p + "self_attn.q_proj.weight"] = (cfg.n_heads * hd, cfg.d_model)
        shapes[p + "self_attn.k_proj.weight"] = (cfg.n_kv_heads * hd, cfg.d_model)
        shapes[p + "self_attn.v_proj.weight"] = (cfg.n_kv_heads * hd, cfg.d_model)
        shapes[p + "self_attn.o_proj.weight"] = (cfg.d_model, cfg.n_heads * hd)
        shapes[p + "post_attention_layernorm.weight"] = (cfg.d_model,)
        shapes[p + "mlp.gate_proj.weight"] = (cfg.d_ff, cfg.d_model)
        shapes[p + "mlp.up_proj.weight"] = (cfg.d_ff, cfg.d_model)
        shapes[p + "mlp.down_proj.weight"] = (cfg.d_model, cfg.d_ff)
    shapes["model.norm.weight"] = (cfg.d_model,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, cfg.d_model)
    return shapes


def count_parameters(cfg: ModelConfig, include_embeddings: bool = True, muon_only: bool = False) -> int:
    """The parameter count of `parameter_shapes` in closed form: known without listing tensors, so a damaged
    config.json that claims a billion layers is measured (and refused) before anything is allocated for it.
    `muon_only`: only the weights `uses_muon` gives Muon (one fp32 buffer each instead of AdamW's two)."""
    d, hd = cfg.d_model, cfg.resolved_head_dim
    matrices = 2 * cfg.n_heads * hd * d + 2 * cfg.n_kv_heads * hd * d + 3 * cfg.d_ff * d
    if muon_only:
        return cfg.n_layers * matrices
    heads = 1 if cfg.tie_embeddings else 2
    total = cfg.vocab_size * d * heads + d + cfg.n_layers * (2 * d + matrices)
    return total if include_embeddings else total - cfg.vocab_size * d


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), as in PaLM / nanoGPT: 6 x matmul weights + attention.

    The LM head counts as a matmul whether or not it is tied; the embedding lookup does not."""
    hd = cfg.resolved_head_dim
    per_layer = cfg.d_model * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * cfg.d_model * cfg.d_ff
    matmul_weights = cfg.n_layers * per_layer + cfg.vocab_size * cfg.d_model
    attention = 12 * cfg.n_layers * cfg.n_heads * hd * seq_len
    return 6 * matmul_weights + attention


def is_decayed(ndim: int) -> bool:
    """Weight decay applies to 2-D weights only (matrices and embeddings), never to norms."""
    return ndim >= 2


MUON_WEIGHTS = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")


def uses_muon(name: str, optimizer: str = "muon") -> bool:
    """Whether `training.optimizer` gives parameter `name` (an HF name) to Muon: the 2-D projections inside the
    blocks. Embeddings, the LM head and norms stay on AdamW (Muon's orthogonalised update suits hidden
    matrices, not lookup tables or gains). The one rule both backends and the checkpoint format follow."""
    return optimizer == "muon" and MUON_WEIGHTS.fullmatch(name) is not None


def moment_names(name: str, optimizer: str) -> tuple[str, ...]:
    """The neutral optimizer-state tensors of one parameter: "<param>.momentum_buffer" for a Muon weight,
    "<param>.exp_avg" and "<param>.exp_avg_sq" for an AdamW one (fp32, the parameter's shape)."""
    if uses_muon(name, optimizer):
        return (f"{name}.momentum_buffer",)
    return (f"{name}.exp_avg", f"{name}.exp_avg_sq")


def moment_shapes(cfg: ModelConfig, optimizer: str) -> dict[str, tuple[int, ...]]:
    """Every tensor optimizer.safetensors holds for `training.optimizer` = `optimizer`, with its shape."""
    return {moment: shape for name, shape in parameter_shapes(cfg).items() for moment in moment_names(name, optimizer)}


def init_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """GPT-2 style init: N(0, init_std) everywhere, output projections (o_proj, down_proj) scaled by
    1/sqrt(2 * n_layers) so the residual stream's variance does not grow with depth; norms at 1."""
    rng = np.random.default_rng(seed)
    residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    weights: dict[str, np.ndarray] = {}
    for name, shape in parameter_shapes(cfg).items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            weights[name] = np.ones(shape, dtype=np.float32)
            continue
        std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else cfg.init_std
        weights[name] = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
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
