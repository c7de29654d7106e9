"""The fused loss and the fused AdamW against the plain paths they replaced, each in its own process.

    python bench/loss.py [--config config.yaml] [--batch-size 8] [--seq-len 256] [--repeats 3] [--json out.json]

Rows (each pair runs back to back, the median of --repeats timed runs after a warm-up):
- torch step: forward + backward of the whole model, `cross_entropy(model(x), y)` (plain) vs
  `model(x, targets=y)` (fused, torch_model/loss.py); time and peak RSS growth of the process.
- MLX head + loss: compiled value_and_grad of the output projection and loss alone, plain
  cross-entropy of the logits vs mlx_model/loss.py; time and mx.get_peak_memory().
- torch AdamW step on the model's parameters: multi-tensor (foreach) vs the fused kernel.
Separate processes keep one measurement's memory out of another's, and OpenBLAS (preloaded for
MLX on Linux) out of the torch processes. --json PATH also writes the figures as JSON (bench/run_all.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_step(cfg, variant: str, repeats: int) -> dict:
    import torch
    from torch.nn.functional import cross_entropy

    from tinyllama.core.weights import init_weights
    from tinyllama.torch_model.state import build_model

    model = build_model(cfg.model, init_weights(cfg.model, 0))
    tokens = torch.randint(0, cfg.model.vocab_size, (cfg.training.batch_size, cfg.training.seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        loss = model(x, targets=y) if variant == "fused" else cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)

    seconds = timed(step, repeats)
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024  # KiB on Linux
    return {"seconds": seconds, "memory": growth}


def mlx_head(cfg, variant: str, repeats: int) -> dict:
    from tinyllama.mlx_model.blas import ensure_fast_blas

    ensure_fast_blas()
    import mlx.core as mx
    from mlx.nn.losses import cross_entropy

    from tinyllama.mlx_model.loss import linear_cross_entropy

    n, d, v = cfg.training.batch_size * cfg.training.seq_len, cfg.model.d_model, cfg.model.vocab_size
    h, weight = mx.random.normal((n, d)), mx.random.normal((v, d)) * 0.02
    targets = mx.random.randint(0, v, (n,))
    if variant == "fused":
        loss_fn = lambda h, w: linear_cross_entropy(h, w, targets)  # noqa: E731
    else:
        loss_fn = lambda h, w: cross_entropy(h @ w.T, targets, reduction="mean")  # noqa: E731
    step = mx.compile(mx.value_and_grad(loss_fn, argnums=(0, 1)))
    mx.eval(step(h, weight))
    mx.reset_peak_memory()
    seconds = timed(lambda: mx.eval(step(h, weight)), repeats)
    return {"seconds": seconds, "memory": mx.get_peak_memory()}


def adamw(cfg, variant: str, repeats: int) -> dict:
    import torch

    from tinyllama.core.weights import init_weights
    from tinyllama.torch_model.state import build_model

    model = build_model(cfg.model, init_weights(cfg.model, 0))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=variant == "fused", foreach=variant != "fused")
    optimizer.step()
    return {"seconds": timed(optimizer.step, repeats), "memory": 0}


ROWS = {
    "torch step (fwd + bwd)": (torch_step, "plain", "fused"),
    "MLX head + loss (value_and_grad)": (mlx_head, "plain", "fused"),
    "torch AdamW step": (adamw, "foreach", "fused"),
}


def worker(args) -> None:
    from tinyllama.core.config import load_config

    cfg = load_config(args.config, {"training.batch_size": args.batch_size, "training.seq_len": args.seq_len})
    measure = ROWS[args.row][0]
    print(json.dumps(measure(cfg, args.variant, args.repeats)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--row", choices=sorted(ROWS), help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        return worker(args)
    from tinyllama.core.cli import human_bytes
    from tinyllama.core.hardware import cpu_name

    common = ["--config", args.config, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
              "--repeats", str(args.repeats)]  # fmt: skip
    print(f"machine: {cpu_name()}; {args.config}, {args.batch_size} x {args.seq_len} tokens, median of {args.repeats}")
    figures = {}
    for row, (_, before, after) in ROWS.items():
        result = {}
        for variant in (before, after):
            cmd = [sys.executable, __file__, *common, "--row", row, "--variant", variant]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            result[variant] = json.loads(out.strip().splitlines()[-1])
        a, b = result[before], result[after]
        memory = f", memory {human_bytes(a['memory'])} -> {human_bytes(b['memory'])}" if a["memory"] else ""
        print(f"{row}: {before} {a['seconds'] * 1e3:,.0f} ms, {after} {b['seconds'] * 1e3:,.0f} ms "
              f"({a['seconds'] / b['seconds']:.2f}x){memory}")  # fmt: skip
        figures[row] = {"before": before, "after": after, **{v: result[v] for v in (before, after)}}
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_name(), "rows": figures}) + "\n")


if __name__ == "__main__":
    main()
