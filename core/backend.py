"""The interface between the scripts and the two frameworks: which one runs here, and a loaded model.

    name, device = pick("auto")                                  # ("mlx", "gpu") on Apple Silicon, else torch
    backend = load_backend(name, "checkpoints/final.ckpt", None, device)
    for token in backend.generate(prompt_ids, 50, temperature=0.8, seed=0): ...
    backend.score(pairs); backend.mean_loss(windows, batch_size=8); backend.peak_memory()

core/ never imports a framework statically: `load_backend` imports the adapter of the one `pick` names (MLX and
torch never share a process: OpenBLAS is preloaded into MLX processes only).

A `Backend` is a plain dataclass holding one framework's model and the few functions of it only that
framework can run (a KV-cache decoder, a batch of rows at different positions for serving, one batch's loss,
one batch's scores, peak memory);
mlx_model/generate.py and torch_model/generate.py each build one. The loops over those calls live once,
in core/generate.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from tinyllama.core import generate as driver
from tinyllama.core.cli import UserError, install_extra
from tinyllama.core.config import ModelConfig
from tinyllama.core.hardware import is_apple_silicon
from tinyllama.core.sampling import SamplingParams

BACKENDS = ("auto", "mlx", "torch", "cuda", "mps", "cpu")


@dataclass
class Backend:
    name: str  # mlx | torch
    device: str  # gpu / cpu (MLX); cuda:0 / mps / cpu (torch)
    dtype: str  # float32 | bfloat16 | float16
    model: Any  # the framework's Model
    decoder: Callable[[Any, bool], driver.Decoder]  # (model, greedy) -> a fresh KV-cache session
    batch_loss: Callable[[Any, np.ndarray, np.ndarray], float]  # (model, x, y) -> mean loss of one batch
    score_batch: Callable[..., tuple[list[int], list[float]]]  # (model, tokens, rows, cols, targets)
    peak_memory: Callable[[], int | None]  # bytes this process peaked at on the device
    row_batch: Callable[[Any, int], driver.RowBatch] | None = None  # (model, max_rows) -> a serving batch

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    def new_decoder(self, greedy: bool) -> driver.Decoder:
        return self.decoder(self.model, greedy)

    def new_row_batch(self, max_rows: int) -> driver.RowBatch:
        """An empty continuous batch of up to `max_rows` rows at different positions (serve.py)."""
        return self.row_batch(self.model, max_rows)

    @property
    def label(self) -> str:
        return f"{self.name} {self.device} {self.dtype}"

    def generate(
        self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int | None = None, eos_id: Any = None, **sampling
    ) -> Iterator[int]:
        """New token ids one at a time. `sampling`: temperature (0: greedy), top_k, top_p, repetition_penalty
        (core.sampling.SamplingParams); `eos_id`: an id or ids to stop before."""
        params = SamplingParams(**sampling)
        return driver.generate(
            self.new_decoder, self.config.max_seq_len, prompt_ids, max_new_tokens, params, seed, eos_id
        )

    def generate_batch(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, seed: int | None = None, eos_id: Any = None,
        **sampling,
    ) -> Iterator[tuple[int, list[int]]]:  # fmt: skip
        """(prompt index, new ids) per prompt, equal-length prompts batched (core.generate.generate_batch)."""
        params = SamplingParams(**sampling)
        args = (self.new_decoder, self.config.max_seq_len, prompts, max_new_tokens, params, seed, eos_id)
        return driver.generate_batch(*args)

    def score(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 32
    ) -> list[tuple[int, list[float]]]:
        """(rank of the first continuation token, log-probs of every continuation token) per pair."""
        return driver.score(partial(self.score_batch, self.model), self.config.max_seq_len, pairs, batch_size)

    def mean_loss(self, windows: Any, batch_size: int = 8) -> float:
        """Mean next-token loss over windows (N, L+1), e.g. data.loader.val_windows, or packed rows."""
        return driver.mean_loss(partial(self.batch_loss, self.model), windows, batch_size)


def pick(accelerator: str) -> tuple[str, str]:
    """(backend, device request) for hardware.accelerator or --backend: auto is MLX on Apple Silicon and
    torch elsewhere; torch's device is 'auto' (CUDA, then MPS, then CPU), resolved by torch_model itself."""
    if accelerator == "mlx" or (accelerator == "auto" and is_apple_silicon()):
        return "mlx", "gpu" if is_apple_silicon() else "cpu"
    if accelerator in ("auto", "torch"):
        return "torch", "auto"
    if accelerator in ("cuda", "mps", "cpu"):
        return "torch", accelerator
    raise UserError(f"unknown backend or accelerator '{accelerator}': use auto, mlx, torch, cuda, mps or cpu")


INSTALL = {"mlx": f"{install_extra('mlx')} in the clone (mlx[cpu] on Linux)", "torch": "pip install torch"}


def load_backend(name: str, path: str | Path, dtype: str | None, device: str) -> Backend:
    """The model at `path` on backend `name` (from `pick`), through that framework's adapter."""
    try:
        adapter = import_module(f"tinyllama.{name}_model.generate")
    except ModuleNotFoundError as exc:
        if exc.name not in ("mlx", "torch"):
            raise
        raise UserError(f"the {name} backend needs the {exc.name} package: {INSTALL[name]}") from None
    return adapter.load_backend(path, dtype, device)
