"""Train the Llama with MLX: Apple Silicon GPUs (Metal), or the CPU on Linux.

    python train_mlx.py --config config.yaml
    python train_mlx.py --config config.yaml --resume auto --training.max_steps 4000
    python train_mlx.py --config config.yaml --dry-run
    mlx.launch --hostfile hosts.json --backend ring train_mlx.py --config config.yaml   # over Macs (docs/training.md)

Any config key can be overridden: --section.key value (see --help).
"""

from __future__ import annotations

import sys
from functools import partial

from tinyllama.mlx_model.blas import ensure_fast_blas

if __name__ == "__main__":
    from tinyllama.core.cli import exit_on_interrupt

    exit_on_interrupt()  # Ctrl-C while importing: one line, no traceback
    ensure_fast_blas()  # re-exec with OpenBLAS on Linux, before MLX is loaded

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

from tinyllama.core.cli import UserError, run_cli
from tinyllama.core.generate import mean_loss
from tinyllama.core.hardware import peak_flops
from tinyllama.core.loop import Device, Run, start_together
from tinyllama.core.training import MemoryTraits, load_train_config, parse_train_args
from tinyllama.data.prepare import prepare_data
from tinyllama.mlx_model.generate import as_backend
from tinyllama.mlx_model.loss import logit_copies
from tinyllama.mlx_model.optim import (
    apply_weight_decay,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
    restore_state,
)
from tinyllama.mlx_model.state import build_model, device_memory_bytes, device_name, measured_gemm_flops, model_state


def build_step(model, optimizer, cfg, world_size: int):
    """Compiled micro-step (accumulate gradients) and step (last micro-batch + clip + AdamW/Muon update; returns
    the loss, the gradient norm and the updated weights' norm, whose finiteness the loop checks)."""
    t = cfg.training

    def loss(m, x, y, denominator, *segments):  # segments: packed conversations
        return m(x, targets=y, segments=segments[0] if segments else None, denominator=denominator, training=t)

    loss_and_grad = nn.value_and_grad(model, loss)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)  # value_and_grad swaps the model's params while tracing
    def micro_step(acc, *batch):
        loss, grads = loss_and_grad(model, *batch)
        return loss, tree_map(mx.add, acc, grads)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(acc, lr, *batch):
        loss, grads = loss_and_grad(model, *batch)
        grads = tree_map(lambda a, g: (a + g) / t.grad_accum, acc, grads)
        if world_size > 1:
            grads = tree_map(lambda g: mx.distributed.all_sum(g) / world_size, grads)
        if t.grad_clip > 0:
            grads, norm = optim.clip_grad_norm(grads, t.grad_clip)
        else:
            norm = optim.clip_grad_norm(grads, float("inf"))[1]
        optimizer.learning_rate = lr
        apply_weight_decay(model, lr, t.weight_decay, t.optimizer)
        optimizer.update(model, grads)
        weights = tree_flatten(model.trainable_parameters())
        return loss, norm, mx.sqrt(sum(mx.sum(mx.square(p.astype(mx.float32))) for _, p in weights))

    return micro_step, step


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_train_args(__doc__, argv, "train_mlx.py")
    group = mx.distributed.init()  # first: a rank that fails to start below must reach the others
    world = group.size()

    def any_rank(flag: bool) -> bool:
        return flag if world == 1 else mx.distributed.all_sum(mx.array(int(flag))).item() > 0

    def gather(values):  # every rank's small int64 vector, in rank order
        return np.array(mx.distributed.all_gather(mx.array(values)[None]))

    cfg = start_together(lambda: load_train_config(args.config, overrides, args.resume), world, gather)
    t = cfg.training
    if cfg.hardware.accelerator not in ("auto", "mlx"):
        raise UserError(f"hardware.accelerator is {cfg.hardware.accelerator}: train with train_cuda.py (or train.py)")

    chip = device_name()
    peak = peak_flops(chip, t.dtype)
    measured = peak is None and not args.dry_run
    peak = measured_gemm_flops(t.dtype) if measured else peak  # a CPU (MLX on Linux): ~1 s
    device = Device(
        f"{mx.default_device()} ({chip})",
        device_memory_bytes(),
        peak,
        peak_measured=measured,
        memory_traits=MemoryTraits(lazy_graph=True, logit_copies=logit_copies()),
    )
    run = Run(cfg, "mlx", device, group.rank(), world, any_rank, gather)
    if t.optimizer == "muon" and t.muon_precision == "bfloat16" and mx.default_device().type == mx.cpu:
        run.say("warning: MLX's CPU backend has no fast bf16 matmul: Newton-Schulz in bf16 runs many times slower than "
                "in fp32 there; set training.muon_precision float32 (bf16 pays on Apple's GPU)")  # fmt: skip
    if args.dry_run:
        return run.dry_run()

    run.claim(args.resume)  # output.dir: locked, checked, never mixed with an earlier run
    data = run.together(lambda: prepare_data(cfg.data, progress=run.is_main, launch=run.is_node_main))
    start = run.prepare(data, args.resume)  # where every rank starts (the same, checked), batches, val set
    model = build_model(cfg.model, start.weights, dtype=t.dtype)
    optimizer = make_optimizer(t, cfg.model)
    load_optimizer_state(optimizer, model, start.optimizer, start.updates)
    del start.weights, start.optimizer
    micro_step, step_fn = build_step(model, optimizer, cfg, run.world)

    def batch_loss(x, y, *segments) -> float:
        return model(mx.array(x), targets=mx.array(y), segments=mx.array(segments[0]) if segments else None).item()

    def evaluate(windows) -> float:
        return mean_loss(batch_loss, windows, t.batch_size)

    def capture():
        return model_state(model), optimizer_state(optimizer)

    run.attach(evaluate, as_backend(model).generate, capture, mx.get_peak_memory)
    for step in run.steps():
        lr = mx.array(run.lr(step), dtype=mx.float32)
        acc = tree_map(mx.zeros_like, model.trainable_parameters())
        denominator = mx.array(run.denominator(step))  # targets per micro-batch, all ranks

        def batch(micro: int, step=step, denominator=denominator) -> list[mx.array]:  # x, y, denominator[, segments]
            x, y, *segments = map(mx.array, run.batch(step, micro))
            return [x, y, denominator, *segments]

        losses = []
        for micro in range(t.grad_accum - 1):
            loss, acc = micro_step(acc, *batch(micro))
            mx.eval(loss, acc)
            losses.append(loss)
        # MLX arrays are immutable: holding the old trees is enough to undo a skipped update
        before = (model.parameters(), tree_map(lambda a: a, optimizer.state)) if t.on_nonfinite == "skip" else None
        loss, grad_norm, weight_norm = step_fn(acc, lr, *batch(t.grad_accum - 1))
        loss = mx.mean(mx.stack([*losses, loss]))
        if run.world > 1:
            loss = mx.distributed.all_sum(loss) / run.world
        mx.eval(model.state, optimizer.state, loss, grad_norm, weight_norm)
        finite = run.finite(step, loss.item(), grad_norm.item(), weight_norm.item())
        if not finite:
            model.update(before[0])
            restore_state(optimizer, before[1])
        run.end_step(step, loss.item(), grad_norm.item(), skipped=not finite)
    run.finish()


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
