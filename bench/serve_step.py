"""What bounds serve.py: one decode step of its batch (RowBatch.step), timed alone, in the main thread and in a
second thread, and the LM head's product alone.

    python bench/serve_step.py --backend torch          # config.yaml's model, random weights, 1 and 8 rows
    python bench/serve_step.py --backend mlx --rows 8 --steps 40

Rows are prefilled with 20-token prompts, then stepped on their own greedy tokens; each figure is the median
of --steps steps after a warm-up. The thread rows say why serve.py decodes in its main thread (on a CPU,
torch's kernels ran slower called from another thread). On Linux the MLX process re-executes itself with
OpenBLAS preloaded, as serve.py does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tinyllama.core.architecture import init_weights  # noqa: E402
from tinyllama.core.backend import load_backend  # noqa: E402
from tinyllama.core.checkpoint import save_checkpoint  # noqa: E402
from tinyllama.core.config import load_config  # noqa: E402


def step_ms(backend, rows: int, steps: int) -> float:
    """Median milliseconds of one RowBatch.step over `rows` rows, host argmax included (as the engine's)."""
    batch = backend.new_row_batch(rows)
    prompts = np.random.default_rng(0).integers(0, backend.config.vocab_size, (rows, 20))
    tokens = batch.to_host(batch.prefill(prompts)).argmax(-1)
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        tokens = batch.to_host(batch.step(tokens)).argmax(-1)
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def in_thread(fn, *args) -> float:
    result: list[float] = []
    worker = threading.Thread(target=lambda: result.append(fn(*args)))
    worker.start()
    worker.join()
    return result[0]


def head_ms(backend, rows: int, steps: int) -> float:
    """Median milliseconds of the LM head alone on (rows, d_model) hidden states."""
    hidden = np.random.default_rng(1).standard_normal((rows, backend.config.d_model)).astype(np.float32)
    if backend.name == "mlx":
        import mlx.core as mx

        h = mx.array(hidden)
        run = lambda: mx.eval(backend.model.logits(h))  # noqa: E731
    else:
        import torch

        h = torch.from_numpy(hidden)

        def run():
            with torch.inference_mode():
                backend.model.logits(h)

    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        run()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["torch", "mlx"], default="torch")
    p.add_argument("--config", default=str(ROOT / "config.yaml"), help="model size (default: %(default)s)")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per figure (default: 60)")
    args = p.parse_args()
    if args.backend == "mlx":
        from tinyllama.mlx_model.blas import ensure_fast_blas

        ensure_fast_blas()
    cfg = load_config(args.config).model
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "bench", init_weights(cfg, seed=0), cfg)
        backend = load_backend(args.backend, ckpt, None, "cpu" if args.backend == "torch" else "auto")
        print(f"{backend.label}, {Path(args.config).name}'s model, random weights")
        for rows in args.rows:
            main_ms = step_ms(backend, rows, args.steps)
            other_ms = in_thread(step_ms, backend, rows, args.steps)
            head = head_ms(backend, rows, args.steps)
            print(f"{rows} rows: step {main_ms:.2f} ms in the main thread, {other_ms:.2f} ms in a second thread "
                  f"({other_ms / main_ms:.2f}x); LM head alone {head:.2f} ms; "
                  f"{rows / main_ms * 1000:.0f} tok/s at most")  # fmt: skip


if __name__ == "__main__":
    main()
