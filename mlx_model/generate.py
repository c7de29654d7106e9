"""MLX's half of generation and scoring: the forward and KV-cache calls (twin of torch_model/generate.py).

    backend = load_backend("checkpoints/final.ckpt")          # or as_backend(model)
    for token in backend.generate(prompt_ids, 50, temperature=0.8, top_p=0.95, seed=0): ...

The decode loop, sampling and stopping are core/generate.py's. Here: the prompt prefilled in one pass,
then one token per step through the KV cache; greedy argmax stays in MLX and each step is queued with
`mx.async_eval` before the host waits for the previous one. No `mx.compile`: plain calls, so any Llama
directory works without a warm-up.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from tinyllama.core.backend import Backend
from tinyllama.mlx_model.model import Model
from tinyllama.mlx_model.state import load_model


def last_logits(model: Model, tokens: mx.array, cache: list) -> mx.array:
    """Next-token logits (B, V) of the last position only: the LM head (the largest matmul of a small
    model) runs on one position instead of the whole prompt. Same result as `model(tokens, cache)[:, -1]`."""
    return model.logits(model.model(tokens, cache)[:, -1, :])  # (B, V)


class Decoder:
    """One KV-cache session (core.generate.Decoder): the last position's argmax ids or fp32 logits."""

    def __init__(self, model: Model, greedy: bool):
        self.model, self.greedy, self.cache = model, greedy, model.make_cache()

    def __call__(self, tokens: np.ndarray | mx.array) -> mx.array:
        tokens = tokens[:, None] if isinstance(tokens, mx.array) else mx.array(tokens)  # (B, T)
        logits = last_logits(self.model, tokens, self.cache)  # (B, V)
        out = mx.argmax(logits, axis=-1) if self.greedy else logits.astype(mx.float32)
        mx.async_eval(out)  # queued now; the host waits only when it reads the result
        return out

    @staticmethod
    def to_host(out: mx.array) -> np.ndarray:
        return np.array(out)


def score_batch(model: Model, tokens: np.ndarray, rows: np.ndarray, cols: np.ndarray, targets: np.ndarray):
    """Ranks and log-probs of `targets` at logits[rows, cols] of one right-padded batch (core.generate.score)."""
    logits = model(mx.array(tokens))[mx.array(rows), mx.array(cols)].astype(mx.float32)  # (M, V)
    chosen = mx.take_along_axis(logits, mx.array(targets)[:, None], axis=-1)  # (M, 1)
    logprobs = chosen[:, 0] - mx.logsumexp(logits, axis=-1)
    ranks = 1 + (logits > chosen).sum(axis=-1)
    return ranks.tolist(), logprobs.tolist()


def batch_loss(model: Model, x: np.ndarray, y: np.ndarray, segments: np.ndarray | None = None) -> float:
    """Mean loss over the targets >= 0 of y; `segments`: packed rows (core.generate.mean_loss)."""
    segments = mx.array(segments) if segments is not None else None
    return model(mx.array(x), targets=mx.array(y), segments=segments).item()


def peak_memory() -> int:
    """Peak bytes MLX allocated in this process (Metal or CPU)."""
    return int(mx.get_peak_memory())


def as_backend(model: Model) -> Backend:
    """`model` behind the framework-free interface that infer, evaluate and the trainers' samples use."""
    from tinyllama.mlx_model.batch import RowBatch  # it builds on this module's last_logits

    dtype = str(model.model.norm.weight.dtype).rsplit(".", 1)[-1]  # the embedding may be quantized (uint32)
    device = mx.default_device().type.name  # gpu (Metal) or cpu
    return Backend("mlx", device, dtype, model, Decoder, batch_loss, score_batch, peak_memory, RowBatch)


def transpose_storage(model: Model) -> Model:
    """On MLX's CPU, store the fp32 LM head transposed in memory: same shape and values, a (V, d) view of
    (d, V) storage. At one row the head is most of a decode step, and MLX's CPU matmul streams the (d, V)
    layout faster. Every matrix transposed, as torch_model.generate does, was faster on one CPU tried and
    slower on another, so only the head, faster on both (docs/benchmarks.md). Inference only: the trainers'
    models keep the usual layout; on a GPU nothing changes."""
    head = model.head_layer
    if mx.default_device() == mx.cpu and type(head) in (nn.Embedding, nn.Linear) and head.weight.dtype == mx.float32:
        head.weight = mx.contiguous(head.weight.T).T  # (V, d) over (d, V) storage
        mx.eval(head.weight)
    return model


def load_backend(path: str | Path, dtype: str | None = None, device: str = "gpu") -> Backend:
    """Any Llama model directory (ours, transformers', mlx_lm's); MLX runs on its default device, laid out
    for inference (transposed storage on the CPU)."""
    model, _ = load_model(path, dtype)
    return as_backend(transpose_storage(model))
