"""Training-step throughput: our torch model vs transformers' LlamaForCausalLM, in one process.

    python bench/train_torch.py [--config config.yaml] [--batch-size 8] [--seq-len 256] [--steps 10] [--json out.json]
    # the CUDA check (one GPU): 124M, bf16 autocast, torch.compile, flash SDPA, MFU against the card's peak
    python bench/train_torch.py --config configs/gpt2-124m.yaml --batch-size 16 --seq-len 1024 \\
        --steps 100 --rounds 1 --dtype bfloat16 --compile

Same config, same initial weights, same batches, same loss value (fp32 cross-entropy: ours from
our model's fused loss, model(x, targets=y); theirs from their logits), same AdamW
(weight decay on 2-D weights, fused kernel), same clipping, same autocast and compile settings,
both with SDPA attention (flash backend on CUDA). The two models take turns (--turn steps each, one step
on a CPU), so a change of the machine's speed hits both; the ratio is the median of the turns' ratios.
Prints tokens/s for each (the median turn), MFU (against the card's published peak, else this machine's
measured GEMM rate, as train_cuda.py logs it) and ours / transformers; --json PATH also writes them as
JSON (bench/run_all.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from turns import alternate, medians, spread  # noqa: E402  (bench/turns.py)

from tinyllama.core.architecture import flops_per_token, init_weights  # noqa: E402
from tinyllama.core.config import load_config  # noqa: E402
from tinyllama.core.hardware import cpu_name, peak_flops  # noqa: E402
from tinyllama.core.hf_config import to_hf_config  # noqa: E402
from tinyllama.torch_model.loss import keep_eager_under_compile  # noqa: E402
from tinyllama.torch_model.optim import make_optimizer  # noqa: E402
from tinyllama.torch_model.state import build_model, measured_gemm_flops  # noqa: E402


def plain_loss(logits, targets):
    """transformers' side: cross-entropy of the full fp32 logits (the loss a user writes by hand)."""
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten().long())


def transformers_model(cfg, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = to_hf_config(cfg.model)
    model = LlamaForCausalLM(LlamaConfig(**hf, attn_implementation="sdpa"))
    weights = {k: torch.from_numpy(v) for k, v in init_weights(cfg.model, 0).items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # tied head
    return model.to(device)


def make_step(model, loss_of, cfg, device, bf16: bool, compile_model: bool):
    """One training step of `model` on a batch: forward, loss, backward, clipping, AdamW."""
    optimizer = make_optimizer(model, cfg.training, cfg.model)  # our rule for transformers' model too
    if compile_model:
        keep_eager_under_compile()  # what torch_model/wrap.py does before compiling
    run = torch.compile(model) if compile_model else model
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def one(x, y):
        with autocast():
            loss = loss_of(run, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return one


def on_device(batches, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """numpy (x, y) batches as int64 tensors on `device`, copied once before any timing."""
    return [(torch.from_numpy(x).long().to(device), torch.from_numpy(y).long().to(device)) for x, y in batches]


def tokens_per_second(step, batches, device) -> float:
    start = time.perf_counter()
    for x, y in batches:
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(x.numel() for x, _ in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="fresh pairs of models (default: 3)")
    parser.add_argument("--turn", type=int, default=0,
                        help="steps each model runs before the other's turn (default: 1 on a CPU, whose speed drifts "
                             "within seconds; every step on a GPU, whose queue a turn would drain)")  # fmt: skip
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args()
    cfg = load_config(args.config, {"training.batch_size": args.batch_size, "training.seq_len": args.seq_len})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.steps):
        tokens = rng.integers(0, cfg.model.vocab_size, size=(args.batch_size, args.seq_len + 1))
        batches.append((tokens[:, :-1], tokens[:, 1:]))
    bf16 = args.dtype == "bfloat16"
    tensors = on_device(batches, device)
    turn = args.turn or (args.steps if device.type == "cuda" else 1)
    ours, theirs = [], []  # tok/s of each turn
    for _ in range(args.rounds):
        model = build_model(cfg.model, init_weights(cfg.model, 0), device=device)
        ours_step = make_step(model, lambda m, x, y: m(x, targets=y), cfg, device, bf16, args.compile)
        hf = transformers_model(cfg, device)
        loss_of = lambda m, x, y: plain_loss(m(input_ids=x, use_cache=False).logits, y)  # noqa: E731
        theirs_step = make_step(hf, loss_of, cfg, device, bf16, args.compile)
        tokens_per_second(ours_step, tensors[:2], device)  # warm up (and compile)
        tokens_per_second(theirs_step, tensors[:2], device)
        rates = alternate(ours_step, theirs_step, tensors, turn, lambda step, b: tokens_per_second(step, b, device))
        ours, theirs = ours + rates[0], theirs + rates[1]
        del model, hf, ours_step, theirs_step
    o, t, ratio = medians(ours, theirs)
    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    peak = peak_flops(name, args.dtype) if device.type == "cuda" else None
    peak_of = "published peak" if peak else "measured GEMM rate"
    peak = peak or measured_gemm_flops(device, args.dtype)
    fpt = flops_per_token(cfg.model, args.seq_len)

    def mfu(tok_s: float) -> str:
        return f", MFU {100 * tok_s * fpt / peak:.1f}%"

    threads = torch.get_num_threads()
    print(f"machine: {name}, torch {torch.__version__}, {threads} threads, {peak_of} {peak / 1e12:.2f} TFLOP/s")
    print(f"model: {args.config}, batch {args.batch_size} x {args.seq_len}, {args.steps} steps x {args.rounds} rounds "
          f"in turns of {turn}, {args.dtype}, compile {args.compile}, {fpt / 1e6:.0f} MFLOPs/token")  # fmt: skip

    print(f"ours         : {o:,.0f} tok/s{mfu(o)}  ({spread(ours)})")
    print(f"transformers : {t:,.0f} tok/s{mfu(t)}  ({spread(theirs)})")
    print(f"ratio ours / transformers: {ratio:.2f}x (median of the turns' ratios)")
    if args.json:
        figures = {"machine": name, "device": device.type, "config": args.config, "batch_size": args.batch_size}
        figures |= {"seq_len": args.seq_len, "dtype": args.dtype, "compile": args.compile, "ours": o, "reference": t}
        figures |= {"ratio": ratio, "mfu": o * fpt / peak, "reference_mfu": t * fpt / peak, "peak_of": peak_of}
        figures |= {"turn": turn, "ours_turns": ours, "reference_turns": theirs}
        Path(args.json).write_text(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
