"""The dtype vocabulary of weights: names, spellings, numpy dtypes (bf16 through ml_dtypes), and what a set
of weights is stored and run in."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

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
    reads and writes), imported here on first need only, since the import alone is slow."""
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
