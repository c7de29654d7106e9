"""Where a training step of our torch model spends its time: torch.profiler over a few steps, the
operators and kernels that took longest, then the plain step time.

    python bench/profile_step.py                                  # config.yaml, 8 x 256, fp32, on the CPU
    # on a GPU (how the H200 figures in docs/benchmarks.md were taken):
    python bench/profile_step.py --config configs/gpt2-124m.yaml --batch-size 16 --seq-len 1024 \\
        --dtype bfloat16 --compile

The step is bench/train_torch.py's own `make_step` (AdamW, clipping, autocast, compile).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from train_torch import make_step  # noqa: E402  (bench/train_torch.py: the benched step itself)

from tinyllama.core.architecture import init_weights  # noqa: E402
from tinyllama.core.config import load_config  # noqa: E402
from tinyllama.torch_model.state import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=22, help="table rows (default: %(default)s)")
    args = parser.parse_args()
    cfg = load_config(args.config, {"training.batch_size": args.batch_size, "training.seq_len": args.seq_len})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = build_model(cfg.model, init_weights(cfg.model, 0), device=device)
    ours = lambda m, x, y: m(x, targets=y)  # noqa: E731
    train_step = make_step(model, ours, cfg, device, args.dtype == "bfloat16", args.compile)
    shape = (args.batch_size, args.seq_len)
    x, y = (torch.randint(0, cfg.model.vocab_size, shape, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def step():
        train_step(x, y)

    for _ in range(3):  # warm up (and compile)
        step()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        sync()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=70))
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    print(f"step: {(time.perf_counter() - start) / args.steps * 1e3:.1f} ms ({device.type}, {args.dtype})")


if __name__ == "__main__":
    main()
