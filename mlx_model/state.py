"""Our MLX model <-> numpy state dicts (HF names), and loading any Llama model directory."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from tinyllama.core.architecture import ignored_layers, init_weights
from tinyllama.core.config import ModelConfig
from tinyllama.core.dtypes import numpy_dtype, runtime_dtype
from tinyllama.core.hardware import apple_chip, cpu_name, remembered_gemm_flops, system_memory_bytes
from tinyllama.core.model_files import CheckpointError, load_weights, mlx_quantization, read_model_config, weight_files
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
    """A model in `dtype`, from `weights` or from the shared numpy init (core.architecture)."""
    model = Model(cfg)
    model.set_dtype(DTYPES[dtype])
    load_state(model, weights if weights is not None else init_weights(cfg, seed))
    return model


def load_model(path: str | Path, dtype: str | None = None) -> tuple[Model, ModelConfig]:
    """Load any Llama model directory (ours, transformers', mlx_lm's, quantized or not) with its own dtype
    unless given."""
    cfg = read_model_config(path)
    quantization = mlx_quantization(path)
    if quantization is not None:
        return load_quantized(Path(path), cfg, quantization, dtype), cfg
    weights = load_weights(path, cfg)
    if dtype is None:
        dtype = runtime_dtype(weights)
    return build_model(cfg, weights, dtype=dtype), cfg


def load_quantized(path: Path, cfg: ModelConfig, quantization: dict, dtype: str | None = None) -> Model:
    """An mlx_lm-quantized directory (`python -m convert export-mlx`, mlx-community's models): each layer is
    quantized as the file says (a layer with `.scales` is quantized; mlx_lm's per-layer overrides kept),
    then the stored tensors load as they are. The rest (norms) runs in the scales' dtype unless given."""
    fix = "re-export it with python -m convert export-mlx"
    tensors: dict[str, mx.array] = {}
    for file in weight_files(path, fix=fix):
        tensors.update(mx.load(str(file)))
    scales = [v.dtype for k, v in tensors.items() if k.endswith(".scales")]
    model = Model(cfg)
    model.set_dtype(DTYPES[dtype] if dtype else (scales[0] if scales else mx.float32))

    def how(layer: str, module: nn.Module) -> bool | dict:
        if f"{layer}.scales" not in tensors:
            return False
        own = quantization.get(layer)
        own = own if isinstance(own, dict) else quantization
        return {"group_size": own["group_size"], "bits": own["bits"], "mode": own.get("mode", "affine")}

    nn.quantize(model, class_predicate=how)
    ignored = ignored_layers(cfg)  # a tied head stored anyway
    tensors = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] not in ignored}
    try:
        model.load_weights(list(tensors.items()), strict=True)
    except ValueError as exc:
        raise CheckpointError(f"{path}: its tensors do not fit the model in config.json ({exc}); {fix}") from None
    mx.eval(model.parameters())
    return model


def _nvidia_info() -> dict | None:
    """mlx[cuda]'s device_info() on Linux when MLX computes on the GPU, else None."""
    if mx.default_device() == mx.gpu and platform.system() != "Darwin":
        return mx.device_info() if hasattr(mx, "device_info") else {}
    return None


def device_name() -> str:
    """What MLX computes on, the key of the MFU peak: the Apple chip, the NVIDIA GPU under mlx[cuda] (which
    apple_chip and cpu_name cannot name: an H200's MFU read 512% against a probe), else the CPU."""
    info = _nvidia_info()
    return str(info.get("device_name", "GPU")) if info is not None else apple_chip() or cpu_name()


def device_memory_bytes() -> int:
    """The memory MLX's arrays live in: an NVIDIA GPU's own, else the system's (unified on a Mac)."""
    info = _nvidia_info()
    return int(info["total_memory"]) if info and "total_memory" in info else system_memory_bytes()


def measured_gemm_flops(dtype: str) -> float:
    """This device's best dense matmul rate in `dtype`: the MFU reference where no published peak is known."""

    def matmul(n: int):
        a = mx.random.normal((n, n)).astype(DTYPES[dtype])
        return lambda: mx.eval(a @ a)

    key = f"mlx {mx.default_device()} {device_name()} {dtype} blas={os.environ.get('TINY_LLAMA_BLAS', '')}"
    return remembered_gemm_flops(key, matmul, accelerator=mx.default_device().type == mx.gpu)
