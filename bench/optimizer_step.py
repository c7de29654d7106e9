"""One optimizer step's cost next to forward+backward: fused AdamW against Muon, same model, same batch.

    python bench/optimizer_step.py                                  # config.yaml's model, make train's 8 x 128
    python bench/optimizer_step.py --batch-size 16 --seq-len 256    # config.yaml's own batch
    python bench/optimizer_step.py --batch-size 8 --seq-len 256 --set model.d_model=256 --set model.n_layers=4 \
        --set model.n_heads=4 --set model.n_kv_heads=4 --set model.d_ff=688 --set model.vocab_size=2048
                                                                    # bench/time_to_loss.py's model

Muon's Newton-Schulz iterations cost the same whatever the batch, so their share of a step falls as the
batch grows; this prints both parts (median of --steps after one warm-up step, the optimizers alternating
for --rounds) and muon step / adamw step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tinyllama.core.config import load_config  # noqa: E402
from tinyllama.torch_model.optim import make_optimizer  # noqa: E402
from tinyllama.torch_model.state import build_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1, help="adamw, muon, adamw, muon, ...: the median of the rounds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")
    args = p.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    totals = {"adamw": [], "muon": []}
    for name in ("adamw", "muon") * args.rounds:
        shape = {"training.batch_size": args.batch_size, "training.seq_len": args.seq_len}
        cfg = load_config(args.config, {**overrides, "training.optimizer": name, **shape})
        model = build_model(cfg.model)
        optimizer = make_optimizer(model, cfg.training)
        x = torch.randint(0, cfg.model.vocab_size, (args.batch_size, args.seq_len + 1))
        forward_backward, step = [], []
        for i in range(args.steps + 1):
            t0 = time.perf_counter()
            model(x[:, :-1], targets=x[:, 1:]).backward()
            t1 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:  # the first step is a warm-up (lazy state, allocations)
                forward_backward.append(t1 - t0)
                step.append(time.perf_counter() - t1)
        fb, st = statistics.median(forward_backward), statistics.median(step)
        totals[name].append(fb + st)
        print(f"{name:6} forward+backward {fb:.3f} s  optimizer step {st:.3f} s", flush=True)
    ratio = statistics.median(totals["muon"]) / statistics.median(totals["adamw"])
    print(f"muon step / adamw step: {ratio:.2f}x ({args.batch_size} x {args.seq_len} tokens)")


if __name__ == "__main__":
    main()
