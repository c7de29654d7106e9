"""Our torch model <-> numpy state dicts (HF names), and loading any Llama model directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tinyllama.core.architecture import init_weights
from tinyllama.core.cli import UserError
from tinyllama.core.config import ModelConfig
from tinyllama.core.dtypes import numpy_dtype, runtime_dtype
from tinyllama.core.hardware import cpu_name, remembered_gemm_flops
from tinyllama.core.model_files import load_weights, read_model_config
from tinyllama.torch_model.model import Model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def to_torch(array: np.ndarray, copy: bool = True) -> torch.Tensor:
    """numpy -> torch, bit-exact for bf16 (ml_dtypes) too; `copy=False` shares the array's memory."""
    array = np.array(array, copy=True) if copy else np.ascontiguousarray(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if hasattr(tensor, "full_tensor"):  # a DTensor shard (FSDP2): gather the whole tensor
        tensor = tensor.full_tensor()
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().copy().view(numpy_dtype("bfloat16"))
    return tensor.numpy().copy()


def resolve_device(request: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for a request from core.backend.pick: auto = CUDA (this rank's GPU), else MPS,
    else the CPU; cuda / mps / cpu insist on that device and say so when it is missing."""
    if request in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if request == "cuda":
        raise UserError("cuda was asked for but no CUDA GPU is visible; use cpu (--hardware.accelerator / --backend)")
    if request in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    if request == "mps":
        raise UserError("mps was asked for but MPS is not available; use cpu (--hardware.accelerator / --backend)")
    return torch.device("cpu")


def unwrap(model: torch.nn.Module) -> Model:
    """The plain Model inside torch.compile / DDP / FSDP wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def model_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: to_numpy(p) for name, p in unwrap(model).state_dict().items()}


def load_state(model: torch.nn.Module, weights: dict[str, np.ndarray], own: bool = False) -> None:
    """Copy numpy weights into the model (cast to its parameter dtype); names must match exactly. `own`: the
    arrays are the caller's to give away; the parameters take their memory instead of a copy (a model
    read from disk: one copy of the weights less at the peak). Otherwise load_state_dict's copy is the only one.
    A read-only array (a GGUF file's memory map) is copied first: torch refuses to promise anything for a tensor
    over memory it may not write (and warns), and a given one would become a parameter."""
    tensors = {k: to_torch(v, copy=not v.flags.writeable) for k, v in weights.items()}  # views where we may
    unwrap(model).load_state_dict(tensors, strict=True, assign=own)


def build_model(
    cfg: ModelConfig,
    weights: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    own: bool = False,
) -> Model:
    """A model on `device` in `dtype`, from `weights` or from the shared numpy init (core.architecture); `own`: the
    weights are not used after this (load_state)."""
    model = Model(cfg)
    load_state(model, weights if weights is not None else init_weights(cfg, seed), own=own or weights is None)
    return model.to(device=device, dtype=DTYPES[dtype])


def load_model(
    path: str | Path, dtype: str | None = None, device: str | torch.device = "cpu"
) -> tuple[Model, ModelConfig]:
    """Load any Llama model directory (ours, transformers', mlx_lm's) with its own dtype unless given."""
    cfg = read_model_config(path)
    weights = load_weights(path, cfg)
    if dtype is None:
        dtype = runtime_dtype(weights)
    return build_model(cfg, weights, dtype=dtype, device=device, own=True), cfg


def weight_norm(model) -> torch.Tensor:
    """Norm of this rank's weights (its shards under FSDP), a 0-d fp32 tensor left on the device: finite or
    not is what the loop asks, read with the step's loss and gradient norm in one transfer (train_cuda.py).
    One foreach kernel per dtype, not a norm and a host read per tensor."""
    local = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in model.parameters()]
    return torch.nn.utils.get_total_norm(local).float()


def measured_gemm_flops(device: torch.device, dtype: str) -> float:
    """This device's best dense matmul rate in `dtype`: the MFU reference where no published peak is known."""
    wait = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(device.type, lambda: None)

    def matmul(n: int):
        a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
        return lambda: (torch.mm(a, a), wait())

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    key = f"torch {device.type} {name} {dtype} threads={torch.get_num_threads()}"
    return remembered_gemm_flops(key, matmul, accelerator=device.type != "cpu")
