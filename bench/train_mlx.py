"""Training-step throughput: our MLX model vs mlx-lm's own `llama` Model, in one process.

    python bench/train_mlx.py [--config config.yaml] [--batch-size 8] [--seq-len 256] [--steps 10] [--json out.json]

Both models get the same config, the same initial weights, the same compiled step (train_mlx.py's:
forward, backward, clipping, AdamW, all under mx.compile) and the same batches; the loss is ours
fused with the head for our model, the plain cross-entropy of the logits for mlx-lm's. The two take turns
of --turn steps (default 1), so a change of the machine's speed hits both; the ratio is the median of the
turns' ratios and each tok/s the median turn's. On Linux the process restarts itself with OpenBLAS preloaded (same BLAS
for both). Prints tokens/s for each, MFU (against the chip's published peak, else this machine's measured
GEMM rate, as train_mlx.py logs it) and ours / mlx-lm; --json PATH also writes them as JSON (bench/run_all.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinyllama.mlx_model.blas import ensure_fast_blas  # noqa: E402

if __name__ == "__main__":
    ensure_fast_blas()

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_map  # noqa: E402
from turns import alternate, medians, spread  # noqa: E402  (bench/turns.py)

from tinyllama.core.architecture import flops_per_token, init_weights  # noqa: E402
from tinyllama.core.config import load_config  # noqa: E402
from tinyllama.core.hardware import peak_flops  # noqa: E402
from tinyllama.core.hf_config import to_hf_config  # noqa: E402
from tinyllama.mlx_model.optim import load_optimizer_state, make_optimizer  # noqa: E402
from tinyllama.mlx_model.state import build_model, device_name, load_state, measured_gemm_flops  # noqa: E402
from tinyllama.train_mlx import build_step  # noqa: E402


def mlx_lm_model(cfg):
    from mlx_lm.models.llama import Model, ModelArgs

    class WithLoss(Model):  # the trainer's call convention, model(x, targets=y, denominator=N) -> loss sum / N
        def __call__(self, inputs, cache=None, targets=None, segments=None, denominator=None, training=None):
            logits = super().__call__(inputs, cache=cache)
            if targets is None:
                return logits
            return nn.losses.cross_entropy(logits.astype(mx.float32), targets).sum() / denominator

    hf = to_hf_config(cfg.model)
    args = ModelArgs.from_dict(hf)
    model = WithLoss(args)
    model.cfg = cfg.model  # the architecture our step's weight-decay rule reads (core.architecture.optimizer_roles)
    load_state(model, init_weights(cfg.model, 0))
    return model


def make_step(model, cfg):
    """One compiled training step of `model` on a batch, evaluated (MLX waits for it)."""
    optimizer = make_optimizer(cfg.training, cfg.model)
    load_optimizer_state(optimizer, model, None, 0)
    micro_step, step = build_step(model, optimizer, cfg, 1)

    def one(x, y):
        acc = tree_map(mx.zeros_like, model.trainable_parameters())
        lr = mx.array(cfg.training.lr, dtype=mx.float32)
        loss, *_ = step(acc, lr, mx.array(x), mx.array(y), mx.array(float(y.size)))
        mx.eval(model.state, optimizer.state, loss)

    return one


def tokens_per_second(step, batches) -> float:
    start = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return sum(x.size for x, _ in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="fresh pairs of models (default: 3)")
    parser.add_argument("--turn", type=int, default=1, help="steps per model before the other's turn (default: 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args()
    cfg = load_config(args.config, {"training.batch_size": args.batch_size, "training.seq_len": args.seq_len})
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.steps):
        tokens = rng.integers(0, cfg.model.vocab_size, size=(args.batch_size, args.seq_len + 1), dtype=np.int32)
        batches.append((tokens[:, :-1], tokens[:, 1:]))
    ours, theirs = [], []  # tok/s of each turn
    for _ in range(args.rounds):
        ours_step = make_step(build_model(cfg.model, init_weights(cfg.model, 0)), cfg)
        theirs_step = make_step(mlx_lm_model(cfg), cfg)
        tokens_per_second(ours_step, batches[:1])  # compile
        tokens_per_second(theirs_step, batches[:1])
        rates = alternate(ours_step, theirs_step, batches, args.turn, tokens_per_second)
        ours, theirs = ours + rates[0], theirs + rates[1]
    o, t, ratio = medians(ours, theirs)
    name = device_name()
    peak = peak_flops(name, cfg.training.dtype)
    peak_of = "published peak" if peak else "measured GEMM rate"
    peak = peak or measured_gemm_flops(cfg.training.dtype)
    fpt = flops_per_token(cfg.model, args.seq_len)
    print(f"machine: {name}, MLX {mx.__version__} on {mx.default_device()}, {peak_of} {peak / 1e12:.2f} TFLOP/s")
    print(f"model: {args.config}, batch {args.batch_size} x {args.seq_len}, {args.steps} steps x {args.rounds} rounds "
          f"in turns of {args.turn}")  # fmt: skip

    print(f"ours   : {o:,.0f} tok/s, MFU {100 * o * fpt / peak:.1f}%  ({spread(ours)})")
    print(f"mlx-lm : {t:,.0f} tok/s, MFU {100 * t * fpt / peak:.1f}%  ({spread(theirs)})")
    print(f"ratio ours / mlx-lm: {ratio:.2f}x (median of the turns' ratios)")
    if args.json:
        figures = {"machine": name, "device": str(mx.default_device()), "config": args.config}
        figures |= {"batch_size": args.batch_size, "seq_len": args.seq_len, "ours": o, "reference": t, "ratio": ratio}
        figures |= {"mfu": o * fpt / peak, "reference_mfu": t * fpt / peak, "peak_of": peak_of}
        figures |= {"turn": args.turn, "ours_turns": ours, "reference_turns": theirs}
        Path(args.json).write_text(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
