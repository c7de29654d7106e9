"""Train the Llama with MLX: Apple Silicon GPUs (Metal), or the CPU on Linux.

    python train_mlx.py --config config.yaml
    python train_mlx.py --config config.yaml --resume auto --training.max_steps 4000
    python train_mlx.py --config config.yaml --dry-run
    mlx.launch -n 2 --hostfile hosts.json train_mlx.py --config config.yaml   # data parallel over Macs

Any config key can be overridden: --section.key value (see --help).
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

from mlx_model.blas import ensure_fast_blas

if __name__ == "__main__":
    ensure_fast_blas()  # re-exec with OpenBLAS on Linux, before MLX is loaded

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map
from tqdm import tqdm

from core.cli import run_cli
from core.hardware import apple_chip, cpu_name, peak_flops, system_memory_bytes
from core.metrics import MetricsLog
from core.schedule import lr_at, total_steps
from core.training import (
    StopSignal,
    Throughput,
    dry_run_report,
    load_train_config,
    nonfinite_error,
    parse_train_args,
    resolve_start,
    step_name,
    trainer_state,
    write_checkpoint,
)
from core.weights import flops_per_token
from data.loader import BatchLoader, val_batches
from data.prepare import prepare_data
from mlx_model.generate import generate
from mlx_model.optim import apply_weight_decay, load_optimizer_state, make_optimizer, optimizer_state
from mlx_model.state import build_model, model_state


def build_step(model, optimizer, cfg, world_size: int):
    """Compiled micro-step (accumulate gradients) and step (last micro-batch + clip + AdamW update)."""
    t = cfg.training
    loss_and_grad = nn.value_and_grad(model, lambda m, x, y: m(x, targets=y))
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)  # value_and_grad swaps the model's params while tracing
    def micro_step(x, y, acc):
        loss, grads = loss_and_grad(model, x, y)
        return loss, tree_map(mx.add, acc, grads)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y, acc, lr):
        loss, grads = loss_and_grad(model, x, y)
        grads = tree_map(lambda a, g: (a + g) / t.grad_accum, acc, grads)
        if world_size > 1:
            grads = tree_map(lambda g: mx.distributed.all_sum(g) / world_size, grads)
        if t.grad_clip > 0:
            grads, norm = optim.clip_grad_norm(grads, t.grad_clip)
        else:
            norm = optim.clip_grad_norm(grads, float("inf"))[1]
        optimizer.learning_rate = lr
        apply_weight_decay(model, lr, t.weight_decay)
        optimizer.update(model, grads)
        return loss, norm

    return micro_step, step


def evaluate(model, batches) -> float:
    losses = [model(mx.array(x), targets=mx.array(y)) for x, y in batches]
    return float(mx.mean(mx.stack(losses)).item())


def sample(model, tokenizer, prompt: str, n_tokens: int) -> str:
    ids = tokenizer.encode(prompt)
    return prompt + tokenizer.decode(list(generate(model, ids, n_tokens, eos_id=tokenizer.eos_id)))


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_train_args(__doc__, argv)
    cfg = load_train_config(args.config, overrides)
    t = cfg.training
    group = mx.distributed.init()
    rank, world = group.rank(), group.size()
    is_main = rank == 0
    say = print if is_main else (lambda *a, **k: None)
    steps = total_steps(t, world)
    device = apple_chip() or cpu_name()
    if args.dry_run:
        report, fits = dry_run_report(cfg, steps, world, f"MLX {mx.default_device()} ({device})", system_memory_bytes())
        print(report)
        if not fits:
            raise SystemExit(1)
        return

    data = prepare_data(cfg.data, progress=is_main)
    tokenizer = data.tokenizer
    data.check_model_vocab(cfg.model.vocab_size)
    start = resolve_start(cfg, args.resume, world)
    model = build_model(cfg.model, start.weights, dtype=t.dtype)
    optimizer = make_optimizer(t)
    load_optimizer_state(optimizer, model, start.optimizer, start.step)
    del start.weights, start.optimizer
    train_loader = BatchLoader(data.tokens("train"), t.seq_len, t.batch_size, t.seed, rank, world, t.grad_accum)
    fixed_val = val_batches(data.tokens("val"), t.seq_len, t.batch_size, t.eval_batches, seed=t.seed)
    micro_step, step_fn = build_step(model, optimizer, cfg, world)

    tokenizer_dir = data.tokenizer_dir
    log = None
    if is_main:
        log = MetricsLog(Path(cfg.output.logs) / cfg.output.run_name, resume_step=start.step)
    say(
        f"training {cfg.output.run_name}: {steps} steps on MLX {mx.default_device()} ({device}), {world} process(es); "
        f"start {start.source} at step {start.step}"
    )
    tokens_per_step = t.batch_size * t.grad_accum * t.seq_len * world
    peak = peak_flops(device, t.dtype)
    flops_tok = flops_per_token(cfg.model, t.seq_len)
    meter = Throughput(start.step, steps)
    tokens_seen, loss_value, lr = start.tokens_seen, float("nan"), lr_at(start.step, t, steps)
    wall_start = time.time() - start.state.get("wall_time", 0.0)

    def save(name: str, step: int) -> Path | None:
        if not is_main:
            return None
        weights, moments = model_state(model), optimizer_state(optimizer)
        state = trainer_state(cfg, step, tokens_seen, lr, loss_value, "mlx", world, time.time() - wall_start)
        return write_checkpoint(cfg, name, weights, moments, state, tokenizer_dir, tokenizer.eos_id, tokenizer.bos_id)

    bar = tqdm(total=steps, initial=start.step, disable=not is_main, unit="step", dynamic_ncols=True)
    with StopSignal() as stop:
        for step in range(start.step, steps):
            lr = lr_at(step, t, steps)
            acc = tree_map(mx.zeros_like, model.trainable_parameters())
            losses = []
            for micro in range(t.grad_accum - 1):
                loss, acc = micro_step(*map(mx.array, train_loader.batch(step, micro)), acc)
                mx.eval(loss, acc)
                losses.append(loss)
            # MLX arrays are immutable: holding the old trees is enough to undo a skipped update
            previous = (
                (model.parameters(), tree_map(lambda a: a, optimizer.state)) if t.on_nonfinite == "skip" else None
            )
            x, y = map(mx.array, train_loader.batch(step, t.grad_accum - 1))
            loss, grad_norm = step_fn(x, y, acc, mx.array(lr, dtype=mx.float32))
            losses.append(loss)
            loss = mx.mean(mx.stack(losses))
            if world > 1:
                loss = mx.distributed.all_sum(loss) / world
            mx.eval(model.state, optimizer.state, loss, grad_norm)
            loss_value, grad_norm_value = loss.item(), grad_norm.item()
            if not (np.isfinite(loss_value) and np.isfinite(grad_norm_value)):
                if t.on_nonfinite == "stop":
                    bar.close()
                    raise nonfinite_error(step + 1, loss_value, grad_norm_value)
                model.update(previous[0])
                optimizer.state = previous[1]
                if is_main:
                    tqdm.write(f"step {step + 1}: non-finite loss or gradient, update skipped")
                continue
            done = step + 1
            tokens_seen += tokens_per_step
            bar.update(1)
            if is_main and (done % t.log_every == 0 or done == steps):
                tok_s, eta = meter.update(done, tokens_per_step)
                mfu = tok_s * flops_tok / world / peak if peak else None  # tok_s counts all processes
                mem = mx.get_peak_memory()
                elapsed = time.time() - wall_start
                tqdm.write(
                    log.train(done, steps, loss_value, lr, tokens_seen, tok_s, mfu, mem, grad_norm_value, elapsed, eta)
                )
            if t.eval_every and (done % t.eval_every == 0 or done == steps):
                val = evaluate(model, fixed_val)
                if is_main:
                    tqdm.write(
                        log.val(done, val, tokens_seen, sample(model, tokenizer, t.sample_prompt, t.sample_tokens))
                    )
            if t.save_every and done % t.save_every == 0 and done < steps:
                save(step_name(done), done)
            if stop.requested:
                path = save(step_name(done), done)
                bar.close()
                say(f"stopped at step {done}; saved {path}; continue with --resume auto")
                return
    bar.close()
    path = save("final.ckpt", steps)
    if is_main:
        log.plot()
        log.close()
        say(f'done: {path}\ntry: python infer.py --ckpt {path} --prompt "{t.sample_prompt}"')


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
