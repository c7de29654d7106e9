"""Time and tokens to a validation bits per byte: a plain transformers loop against our trainers' steps,
AdamW vs Muon.

    python bench/time_to_loss.py [--target 2.38] [--max-steps 600] [--only torch-muon] [--json out.json]
    python bench/time_to_loss.py --target 2.38 --only hf-adamw --max-steps 600 --seed 1   # the reference
    python bench/time_to_loss.py --target 2.38 --only torch-muon --max-steps 300 --seed 1  # our best

One fixed small model (d_model 256, 4 layers, seq 256) on the built-in corpus with a small trained BPE, the
same initial weights (core.architecture.init_weights), the same batches in the same order (data.loader) and the
same validation windows for every variant:

    hf-adamw      transformers.LlamaForCausalLM + torch.optim.AdamW + warmup/cosine, written plainly
    torch-adamw   ours (torch): the model, fused loss and optimizer train_cuda.py uses, cosine
    torch-muon    ours (torch): Muon for the block matrices + AdamW, wsd
    mlx-adamw     ours (MLX): train_mlx.build_step, the compiled step, cosine
    mlx-muon      ours (MLX): the compiled step with Muon + AdamW, wsd

Each variant runs in its own process (MLX re-executes itself with OpenBLAS on Linux). Every `--eval-every`
steps the validation loss is measured (not timed) and turned into bits per byte (the val targets' nats over
ln 2 x the UTF-8 bytes they decode to: comparable across tokenizers); a variant stops at the first one <=
`--target`. Prints wall seconds of training and tokens to reach the target (or "not reached" with the best
bpb); --json PATH also writes them, the history as (step, seconds, val loss, val bpb).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("hf-adamw", "torch-adamw", "torch-muon", "mlx-adamw", "mlx-muon")
# The best of the settings tried on this model (docs/benchmarks.md, "Time to a validation loss"): AdamW peaks at
# 1e-3 (2e-3 and 3e-3 were slower) over a 600-step cosine; Muon + wsd over 300 steps with AdamW's part at 2e-3.
TUNED = {False: {"lr": 1e-3, "max_steps": 600}, True: {"lr": 2e-3, "max_steps": 300}}


def config(args):
    from tinyllama.core.config import load_config

    muon = args.variant.endswith("muon")
    lr = args.lr or TUNED[muon]["lr"]
    overrides = {
        "model.d_model": 256, "model.n_layers": 4, "model.n_heads": 4, "model.n_kv_heads": 4, "model.d_ff": 688,
        "model.max_seq_len": 256, "training.seq_len": 256, "training.batch_size": args.batch_size,
        "training.max_steps": args.max_steps or TUNED[muon]["max_steps"], "training.warmup_steps": args.warmup,
        "training.lr": lr, "training.min_lr": lr / 10, "training.muon_lr": args.muon_lr, "training.seed": args.seed,
        "training.optimizer": "muon" if muon else "adamw", "training.schedule": "wsd" if muon else "cosine",
        "training.muon_precision": args.muon_precision,
        "data.dataset": "builtin", "data.tokenizer": args.tokenizer, "data.max_documents": args.max_documents,
        "data.cache_dir": args.cache_dir,
    }  # fmt: skip
    return load_config(None, overrides)


def torch_loop(cfg, variant: str):
    """(step(x, y, step_index), eval_loss(x, y)) for the torch variants."""
    import torch

    from tinyllama.core.architecture import init_weights
    from tinyllama.core.schedule import lr_at

    t = cfg.training
    weights = init_weights(cfg.model, t.seed)
    if variant == "hf-adamw":  # the plain loop a transformers user writes
        import math

        from transformers import LlamaConfig, LlamaForCausalLM

        from tinyllama.core.hf_config import to_hf_config

        model = LlamaForCausalLM(LlamaConfig(**to_hf_config(cfg.model), attn_implementation="sdpa"))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, eps=t.eps, fused=True)

        def factor(i):  # warmup, then cosine to min_lr
            if i < t.warmup_steps:
                return (i + 1) / t.warmup_steps
            progress = min(1.0, (i - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
            return (t.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)) / t.lr

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

        def loss_of(x, y):
            logits = model(input_ids=x, use_cache=False).logits
            return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    else:
        from tinyllama.torch_model.optim import make_optimizer
        from tinyllama.torch_model.state import build_model

        model = build_model(cfg.model, weights, device=torch.device("cpu"))
        optimizer, schedule = make_optimizer(model, t), None

        def loss_of(x, y):
            return model(x, targets=y)

    def step(x, y, i):
        if schedule is None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(i, t, t.max_steps)
        loss = loss_of(torch.from_numpy(x).long(), torch.from_numpy(y).long())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if schedule is not None:
            schedule.step()
        return loss.item()

    @torch.no_grad()
    def eval_loss(x, y):
        return loss_of(torch.from_numpy(x).long(), torch.from_numpy(y).long()).item()

    return step, eval_loss


def mlx_loop(cfg):
    import mlx.core as mx
    from mlx.utils import tree_map

    from tinyllama.core.architecture import init_weights
    from tinyllama.core.schedule import lr_at
    from tinyllama.mlx_model.optim import load_optimizer_state, make_optimizer
    from tinyllama.mlx_model.state import build_model
    from tinyllama.train_mlx import build_step

    t = cfg.training
    model = build_model(cfg.model, init_weights(cfg.model, t.seed))
    optimizer = make_optimizer(t, cfg.model)
    load_optimizer_state(optimizer, model, None, 0)
    _, compiled = build_step(model, optimizer, cfg, 1)

    def step(x, y, i):
        acc = tree_map(mx.zeros_like, model.trainable_parameters())
        lr = mx.array(lr_at(i, t, t.max_steps), dtype=mx.float32)
        loss, *_ = compiled(acc, lr, mx.array(x), mx.array(y), mx.array(float(y.size)))
        mx.eval(model.state, optimizer.state, loss)
        return loss.item()

    return step, lambda x, y: model(mx.array(x), targets=mx.array(y)).item()


def run_variant(args) -> dict:
    """Train one variant to the target; its figures as a dict."""
    from tinyllama.core.generate import mean_loss, target_bytes
    from tinyllama.core.metrics import bits_per_byte
    from tinyllama.data.prepare import prepare_data

    cfg = config(args)
    data = prepare_data(cfg.data, progress=False)
    cfg.model.vocab_size = data.vocab_size
    t = cfg.training
    batches = data.train_batches(t.seq_len, t.batch_size, t.seed)
    windows = data.val_windows(t.seq_len, args.eval_windows)
    targets, nbytes = target_bytes(windows, data.token_bytes(cfg.model.vocab_size))
    step, eval_batch = mlx_loop(cfg) if args.variant.startswith("mlx") else torch_loop(cfg, args.variant)
    trained, history, reached = 0.0, [], None
    for i in range(t.max_steps):
        x, y = batches.batch(i)
        start = time.perf_counter()
        step(x, y, i)
        trained += time.perf_counter() - start
        if (i + 1) % args.eval_every == 0 or i + 1 == t.max_steps:
            val = mean_loss(eval_batch, windows, t.batch_size)
            bpb = bits_per_byte(val, targets, nbytes)
            history.append((i + 1, round(trained, 3), val, bpb))
            if bpb <= args.target:
                reached = i + 1
                break
    tokens_per_step = t.batch_size * t.seq_len
    steps = reached or history[-1][0]
    return {
        "variant": args.variant, "target": args.target, "reached": reached is not None, "steps": steps,
        "tokens": steps * tokens_per_step, "seconds": history[-1][1], "best_val_bpb": min(b for *_, b in history),
        "best_val_loss": min(v for _, _, v, _ in history), "val_bytes_per_token": nbytes / targets,
        "vocab_size": cfg.model.vocab_size, "max_steps": t.max_steps, "lr": t.lr, "muon_lr": t.muon_lr, "seed": t.seed,
        "muon_precision": t.muon_precision,
        "history": history,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=2.38, help="validation bits per byte to reach")
    parser.add_argument("--max-steps", type=int, help="the schedule's horizon and the give-up point (default: tuned)")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--lr", type=float, help="AdamW peak lr, also of Muon runs' AdamW part (default: tuned)")
    parser.add_argument("--muon-lr", type=float, default=0.02)
    parser.add_argument("--muon-precision", choices=("float32", "bfloat16"), default="float32",
                        help="training.muon_precision: the Newton-Schulz matmuls' dtype")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="initial weights and data order (training.seed)")
    parser.add_argument("--tokenizer", default="bpe:2048")
    parser.add_argument("--max-documents", type=int, default=2000)
    parser.add_argument("--cache-dir", default="data_cache")
    parser.add_argument("--only", action="append", choices=VARIANTS, help="run only these variants (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in this process
    args, rest = parser.parse_known_args()
    if args.variant:
        if args.variant.startswith("mlx"):
            from tinyllama.mlx_model.blas import ensure_fast_blas

            ensure_fast_blas()
        print(json.dumps(run_variant(args)))
        return
    results = []
    for variant in args.only or VARIANTS:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant], capture_output=True,
                             text=True, cwd=ROOT)  # fmt: skip
        if out.returncode:
            results.append({"variant": variant, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]})
        else:
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        if "error" in r:
            print(f"{variant:<12} failed: {r['error']}")
        else:
            what = "reached" if r["reached"] else f"not reached (best {r['best_val_bpb']:.3f})"
            print(f"{variant:<12} val bpb {args.target}: {what} after {r['steps']} steps, "
                  f"{r['tokens']:,} tokens, {r['seconds']:.1f} s of training")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"target": args.target, "results": results}) + "\n")


if __name__ == "__main__":
    main()
