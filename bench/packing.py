"""What packing conversations costs and saves: the block-causal mask's cost per training step, and the
share of a row that holds conversation (packed vs one conversation per padded row).

    python bench/packing.py                       # config.yaml's model, 8 x 256, both backends
    python bench/packing.py --config configs/smoke.yaml --seq-len 64 --steps 3

Per backend: one forward + backward of the same model on the same tokens, causal (plain text) vs with
`segments` (4 conversations per row, the block mask), median over --steps, as a ratio in one process.
Then the fill of builtin-chat's rows (GPT-2 tokens) packed as the trainers pack them, against one
conversation per row padded to seq_len + 1.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinyllama.core.architecture import init_weights  # noqa: E402
from tinyllama.core.config import load_config  # noqa: E402
from tinyllama.core.hardware import cpu_name  # noqa: E402


def batch(cfg, batch_size: int, seq_len: int):
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.model.vocab_size, (batch_size, seq_len)).astype(np.int32)
    y = rng.integers(0, cfg.model.vocab_size, (batch_size, seq_len)).astype(np.int32)
    segments = np.repeat(np.arange(1, 5, dtype=np.int32), -(-seq_len // 4))[None, :seq_len].repeat(batch_size, 0)
    return x, y, segments


def time_torch(cfg, x, y, segments, steps: int) -> dict[str, float]:
    import torch

    from tinyllama.torch_model.state import build_model

    model = build_model(cfg.model, init_weights(cfg.model, 0))
    tx, ty, ts = (torch.from_numpy(a) for a in (x, y, segments))
    out = {}
    for name, seg in (("causal", None), ("packed", ts)):
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            model(tx, targets=ty, segments=seg).backward()
            times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        out[name] = statistics.median(times[1:])
    return out


def time_mlx(cfg, x, y, segments, steps: int) -> dict[str, float]:
    import mlx.core as mx
    import mlx.nn as nn

    from tinyllama.mlx_model.state import build_model

    model = build_model(cfg.model, init_weights(cfg.model, 0))
    loss_and_grad = nn.value_and_grad(model, lambda m, x, y, *s: m(x, targets=y, segments=s[0] if s else None))

    @partial(mx.compile, inputs=model.state, outputs=model.state)
    def grad(x, y, *segments):
        return loss_and_grad(model, x, y, *segments)

    mx_x, mx_y, mx_s = mx.array(x), mx.array(y), mx.array(segments)
    out = {}
    for name, extra in (("causal", ()), ("packed", (mx_s,))):
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            mx.eval(grad(mx_x, mx_y, *extra))
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times[1:])
    return out


def fill(seq_len: int, cache_dir: str) -> tuple[float, float]:
    from tinyllama.data.prepare import prepare_data

    cfg = load_config(None, {"data.dataset": "builtin-chat", "data.cache_dir": cache_dir})
    data = prepare_data(cfg.data, progress=False, log=lambda *_: None)
    loader = data.train_batches(seq_len, 1, 0)
    masks = np.asarray(data.masks("train"))
    lengths = np.diff(np.append(np.flatnonzero(masks & 2), len(masks)))
    one_per_row = float(np.minimum(lengths, seq_len + 1).sum() / (len(lengths) * (seq_len + 1)))
    return loader.fill, one_per_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backends", default="torch,mlx")
    parser.add_argument("--cache-dir", default="data_cache")
    parser.add_argument("--no-fill", action="store_true", help="skip the row-fill figures")
    args = parser.parse_args()
    backends = args.backends.split(",")
    if len(backends) > 1:  # one process each: MLX on Linux preloads OpenBLAS, which slows torch's matmuls
        print(
            f"machine: {cpu_name()}; model {args.config}, batch {args.batch_size} x {args.seq_len}, {args.steps} steps"
        )
        for backend in backends:
            argv = [a for a in sys.argv[1:] if not a.startswith("--backends")]
            subprocess.run([sys.executable, __file__, *argv, f"--backends={backend}", "--no-fill"], check=True)
    elif backends == ["mlx"]:
        from tinyllama.mlx_model.blas import ensure_fast_blas

        ensure_fast_blas()
    if len(backends) == 1:
        cfg = load_config(args.config, {"training.seq_len": args.seq_len})
        x, y, segments = batch(cfg, args.batch_size, args.seq_len)
        t = (time_torch if backends == ["torch"] else time_mlx)(cfg, x, y, segments, args.steps)
        print(f"{backends[0]:5s}: causal {t['causal']:.3f} s, packed (block mask) {t['packed']:.3f} s per step: "
              f"{t['packed'] / t['causal']:.2f}x", flush=True)  # fmt: skip
    if args.no_fill:
        return
    packed, padded = fill(args.seq_len, args.cache_dir)
    print(f"builtin-chat rows of {args.seq_len + 1} GPT-2 tokens hold conversation: packed {packed:.0%}, "
          f"one per padded row {padded:.0%} ({packed / padded:.1f}x the tokens per step)")  # fmt: skip


if __name__ == "__main__":
    main()
