"""Our MLX model <-> numpy state dicts (HF names), and loading any Llama model directory."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from tinyllama.core.config import ModelConfig
from tinyllama.core.model_files import load_weights, read_model_config
from tinyllama.core.weights import init_weights, numpy_dtype, runtime_dtype
from tinyllama.mlx_model.model import Model

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def to_mlx(array: np.ndarray) -> mx.array:
    """numpy -> MLX, bit-exact for bf16 (ml_dtypes) too."""
    if array.dtype.name == "bfloat16":
        return mx.array(np.ascontiguousarray(array).view(np.uint16)).view(mx.bfloat16)
    return mx.array(array)


def to_numpy(array: mx.array) -> np.ndarray:
    if array.dtype == mx.bfloat16:
        return np.array(array.view(mx.uint16)).view(numpy_dtype("bfloat16"))
    return np.array(array)


def model_state(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: to_numpy(p) for name, p in tree_flatten(model.parameters())}


def load_state(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Copy numpy weights into the model (cast to its parameter dtype); names must match exactly."""
    current = dict(tree_flatten(model.parameters()))
    missing = current.keys() - weights.keys()
    extra = weights.keys() - current.keys()
    if missing or extra:
        raise ValueError(
            f"weights do not match the model: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
        )
    model.load_weights([(k, to_mlx(v).astype(current[k].dtype)) for k, v in weights.items()], strict=True)
    mx.eval(model.parameters())


def build_model(
    cfg: ModelConfig, weights: dict[str, np.ndarray] | None = None, seed: int = 0, dtype: str = "float32"
) -> Model:
    """A model in `dtype`, from `weights` or from the shared numpy init (core.weights)."""
    model = Model(cfg)
    model.set_dtype(DTYPES[dtype])
    load_state(model, weights if weights is not None else init_weights(cfg, seed))
    return model


def load_model(path: str | Path, dtype: str | None = None) -> tuple[Model, ModelConfig]:
    """Load any Llama model directory (ours, transformers', mlx_lm's) with its own dtype unless given."""
    cfg = read_model_config(path)
    weights = load_weights(path, cfg)
    if dtype is None:
        dtype = runtime_dtype(weights)
    return build_model(cfg, weights, dtype=dtype), cfg
