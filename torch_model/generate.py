"""PyTorch's half of generation and scoring: the forward and KV-cache calls (twin of mlx_model/generate.py).

    backend = load_backend("checkpoints/final.ckpt", device="auto")   # or as_backend(model)
    for token in backend.generate(prompt_ids, 50, temperature=0.8, top_p=0.95, seed=0): ...

The decode loop, sampling and stopping are core/generate.py's. Here: the prompt prefilled in one pass,
then one token per step through the KV cache (a loaded model with its projections fused,
model.fuse_projections), under `torch.inference_mode`; greedy argmax stays on the device, so on CUDA the
next step is queued before the host waits for the previous one. A loaded fp32 model on the CPU takes greedy
ids from torch_model/greedy.py's screened head (the same ids, a quarter of the head's bytes read).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tinyllama.core.backend import Backend
from tinyllama.core.hardware import peak_rss_bytes
from tinyllama.torch_model.greedy import GreedyHead, int8_kernel_available
from tinyllama.torch_model.model import Model, fuse_projections
from tinyllama.torch_model.state import load_model, resolve_device, unwrap


def last_logits(model: Model, tokens: torch.Tensor, cache: list) -> torch.Tensor:
    """Next-token logits (B, V) of the last position only: the LM head (the largest matmul of a small
    model) runs on one position instead of the whole prompt. Same result as `model(tokens, cache)[:, -1]`."""
    return model.logits(model.model(tokens, cache)[:, -1, :])  # (B, V)


class Decoder:
    """One KV-cache session (core.generate.Decoder): the last position's argmax ids or fp32 logits;
    `greedy_head` (GreedyHead), when given, finds the greedy ids: from the first token once its int8 copy
    exists, else from the session's SCREEN_FROM-th token on, which makes the copy. Making it costs what the
    screen saves over ~100 tokens (docs/benchmarks.md), so a process that only ever gives short answers
    never makes it."""

    SCREEN_FROM = 16

    def __init__(self, model: Model, greedy: bool, greedy_head: GreedyHead | None = None):
        self.model, self.greedy, self.cache = model, greedy, model.make_cache()
        self.greedy_head, self.steps = greedy_head if greedy else None, 0
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def __call__(self, tokens: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens[:, None]  # (B, 1): the previous step's ids, still on the device
        else:
            tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device)  # (B, T)
        hidden = self.model.model(tokens, self.cache)[:, -1, :]  # (B, d)
        self.steps += 1
        if self.greedy_head is not None and (self.greedy_head.q is not None or self.steps >= self.SCREEN_FROM):
            return self.greedy_head.argmax(hidden)  # (B,) int64
        logits = self.model.logits(hidden)  # (B, V)
        if not self.greedy:
            return logits.float()
        if logits.device.type == "cpu":  # numpy's argmax (same first-max rule) is faster than torch's on CPU
            return torch.from_numpy(logits.float().numpy().argmax(axis=-1))  # (B,) int64
        return logits.argmax(dim=-1)

    @staticmethod
    def to_host(out: torch.Tensor) -> np.ndarray:
        return out.cpu().numpy()


@torch.inference_mode()
def score_batch(model: Model, tokens: np.ndarray, rows: np.ndarray, cols: np.ndarray, targets: np.ndarray):
    """Ranks and log-probs of `targets` at logits[rows, cols] of one right-padded batch (core.generate.score)."""
    device = next(model.parameters()).device
    tokens, rows, cols, targets = (torch.as_tensor(a, device=device) for a in (tokens, rows, cols, targets))
    logits = model(tokens)[rows, cols].float()  # (M, V)
    chosen = logits.gather(-1, targets[:, None])  # (M, 1)
    logprobs = chosen[:, 0] - logits.logsumexp(dim=-1)
    ranks = 1 + (logits > chosen).sum(dim=-1)
    return ranks.tolist(), logprobs.tolist()


@torch.inference_mode()
def batch_loss(model: Model, x: np.ndarray, y: np.ndarray, segments: np.ndarray | None = None) -> float:
    """Mean loss over the targets >= 0 of y; `segments`: packed rows (core.generate.mean_loss)."""
    device = next(model.parameters()).device
    x, y, *s = (torch.as_tensor(a, device=device) for a in (x, y, *([segments] if segments is not None else [])))
    return model(x, targets=y, segments=s[0] if s else None).item()


def peak_memory() -> int:
    """Peak bytes: CUDA's allocator on a GPU, else this process's peak resident set (CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return peak_rss_bytes()


def as_backend(model: torch.nn.Module, screen_greedy: bool = False) -> Backend:
    """`model` (or the Model inside a compile/DDP/FSDP wrapper) behind the framework-free interface that
    infer, evaluate and the trainers' samples use. `screen_greedy`: greedy ids from a GreedyHead where it
    applies (an fp32 head on the CPU, no soft-capping: tanh can round distinct logits to equal ones)."""
    from tinyllama.torch_model.batch import RowBatch  # it builds on this module's last_logits

    model = unwrap(model)
    weight = model.model.embed_tokens.weight
    dtype = str(weight.dtype).rsplit(".", 1)[-1]
    head = model.head_layer.weight
    screens = screen_greedy and head.device.type == "cpu" and head.dtype == torch.float32
    screens = screens and not model.cfg.logit_softcap and int8_kernel_available()
    greedy_head = GreedyHead(head) if screens else None  # its int8 copy is made at its first use

    def decoder(model: Model, greedy: bool) -> Decoder:
        return Decoder(model, greedy, greedy_head)

    return Backend("torch", str(weight.device), dtype, model, decoder, batch_loss, score_batch, peak_memory, RowBatch)


def transpose_storage(model: Model) -> Model:
    """On the CPU with MKL, store each fp32 weight matrix transposed in memory: same shapes and values,
    strides (1, out). A decode step multiplies one row (1, d) by every matrix, and MKL's GEMV streams an
    (in, out) row-major matrix faster than the (out, in) one nn.Linear keeps (docs/benchmarks.md). Prefill,
    scoring and loss (many rows) are as fast either way; decoding 2-4 rows at once is slower. Inference only:
    the trainers' models keep the usual layout."""
    if not torch.backends.mkl.is_available():
        return model
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and p.device.type == "cpu" and p.dtype == torch.float32:
                p.data = p.data.t().contiguous().t()
    return model


def load_backend(path: str | Path, dtype: str | None = None, device: str = "auto") -> Backend:
    """Any Llama model directory (ours, transformers', mlx_lm's) on `device` (auto: CUDA, MPS, CPU), laid out
    for inference: transposed storage on the CPU, fused projections (model.fuse_projections), greedy ids from
    a screened head on the CPU (torch_model/greedy.py)."""
    model, _ = load_model(path, dtype, resolve_device(device))
    return as_backend(fuse_projections(transpose_storage(model.eval())), screen_greedy=True)
