"""The fused loss and the fused AdamW against the plain paths they replaced.

    python bench/loss.py [--config config.yaml] [--batch-size 8] [--seq-len 256] [--repeats 5] [--json out.json]

Rows (time: both variants in one process, taking turns of one call each after a warm-up, --repeats turns;
the ratio is the median of the turns' ratios, so the VM's drift hits both):
- torch step: forward + backward of the whole model, `cross_entropy(model(x), y)` (plain) vs
  `model(x, targets=y)` (fused, torch_model/loss.py); memory: peak RSS growth of the process.
- MLX head + loss: compiled value_and_grad of the output projection and loss alone, plain
  cross-entropy of the logits vs mlx_model/loss.py; memory: mx.get_peak_memory().
- torch AdamW step on the model's parameters: multi-tensor (foreach) vs the fused kernel.
Memory is measured in a fresh process per variant (a process's peak RSS only grows), and each row runs
in its own processes: OpenBLAS (preloaded for MLX on Linux) stays out of the torch ones. --json PATH
also writes the figures as JSON (bench/run_all.py).
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


def in_turns(steps: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each call: every step once (warm-up, compile), then `repeats` turns of one call each."""
    for step in steps.values():
        step()
    seconds = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def torch_step(cfg, variant: str):
    import torch
    from torch.nn.functional import cross_entropy

    from tinyllama.core.architecture import init_weights
    from tinyllama.torch_model.state import build_model

    model = build_model(cfg.model, init_weights(cfg.model, 0))
    tokens = torch.randint(0, cfg.model.vocab_size, (cfg.training.batch_size, cfg.training.seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step():
        loss = model(x, targets=y) if variant == "fused" else cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def mlx_head(cfg, variant: str):
    from tinyllama.mlx_model.blas import ensure_fast_blas

    ensure_fast_blas()
    import mlx.core as mx
    from mlx.nn.losses import cross_entropy

    from tinyllama.mlx_model.loss import linear_cross_entropy

    n, d, v = cfg.training.batch_size * cfg.training.seq_len, cfg.model.d_model, cfg.model.vocab_size
    mx.random.seed(0)
    h, weight = mx.random.normal((n, d)), mx.random.normal((v, d)) * 0.02
    targets = mx.random.randint(0, v, (n,))
    if variant == "fused":
        loss_fn = lambda h, w: linear_cross_entropy(h, w, targets)  # noqa: E731
    else:
        loss_fn = lambda h, w: cross_entropy(h @ w.T, targets, reduction="mean")  # noqa: E731
    step = mx.compile(mx.value_and_grad(loss_fn, argnums=(0, 1)))
    mx.eval(h, weight, targets)
    return lambda: mx.eval(step(h, weight))


def adamw(cfg, variant: str):
    import torch

    from tinyllama.core.architecture import init_weights
    from tinyllama.torch_model.state import build_model

    model = build_model(cfg.model, init_weights(cfg.model, 0))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=variant == "fused", foreach=variant != "fused")
    return optimizer.step


def peak_growth(step, memory: str) -> int:
    """Bytes one step holds at its peak: RSS growth over two calls (torch), or MLX's peak after a warm-up."""
    if memory == "mlx":
        import mlx.core as mx

        step()  # compile
        mx.reset_peak_memory()
        step()
        return mx.get_peak_memory()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024  # KiB on Linux


ROWS = {  # row: (setup(cfg, variant) -> step, the variant it replaced, ours, how memory is read)
    "torch step (fwd + bwd)": (torch_step, "plain", "fused", "rss"),
    "MLX head + loss (value_and_grad)": (mlx_head, "plain", "fused", "mlx"),
    "torch AdamW step": (adamw, "foreach", "fused", None),
}


def worker(args) -> None:
    """--variant V: the memory of V alone; no --variant: both variants' times, in turns."""
    from tinyllama.core.config import load_config

    cfg = load_config(args.config, {"training.batch_size": args.batch_size, "training.seq_len": args.seq_len})
    setup, before, after, memory = ROWS[args.row]
    if args.variant:
        print(json.dumps({"memory": peak_growth(setup(cfg, args.variant), memory)}))
    else:
        print(json.dumps(in_turns({v: setup(cfg, v) for v in (before, after)}, args.repeats)))


def run_worker(common: list[str], row: str, variant: str | None = None) -> dict:
    cmd = [sys.executable, __file__, *common, "--row", row, *(["--variant", variant] if variant else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed turns per row (default: 5)")
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
    print(f"machine: {cpu_name()}; {args.config}, {args.batch_size} x {args.seq_len} tokens, {args.repeats} turns")
    figures = {}
    for row, (_, before, after, memory) in ROWS.items():
        seconds = run_worker(common, row)
        ratio = statistics.median(a / b for a, b in zip(seconds[before], seconds[after], strict=True))
        result = {v: {"seconds": statistics.median(seconds[v]), "memory": 0} for v in (before, after)}
        for variant in (before, after) if memory else ():
            result[variant]["memory"] = run_worker(common, row, variant)["memory"]
        a, b = result[before], result[after]
        held = f", memory {human_bytes(a['memory'])} -> {human_bytes(b['memory'])}" if memory else ""
        print(f"{row}: {before} {a['seconds'] * 1e3:,.0f} ms, {after} {b['seconds'] * 1e3:,.0f} ms "
              f"({ratio:.2f}x, median of the turns){held}")  # fmt: skip
        figures[row] = {"before": before, "after": after, "ratio": ratio, **result}
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_name(), "rows": figures}) + "\n")


if __name__ == "__main__":
    main()
