"""Train the Llama with PyTorch: CUDA GPUs (bf16, flash SDPA, torch.compile), also MPS and CPU.

    python train_cuda.py --config configs/gpt2-124m.yaml
    torchrun --nproc-per-node 8 train_cuda.py --config configs/gpt2-124m.yaml        # DDP
    torchrun --nproc-per-node 8 train_cuda.py --config ... --hardware.distributed fsdp  # FSDP2
    python train_cuda.py --config config.yaml --resume auto     # also resumes a train_mlx.py checkpoint

Same skeleton, log lines and checkpoints as train_mlx.py. Any config key: --section.key value.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from core.cli import UserError, run_cli
from core.hardware import cpu_name, peak_flops, system_memory_bytes
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
from torch_model.generate import generate
from torch_model.loss import chunk_bytes as loss_chunk_bytes
from torch_model.optim import load_optimizer_state, make_optimizer, optimizer_state
from torch_model.state import build_model, model_state, unwrap


def pick_device(accelerator: str, local_rank: int) -> torch.device:
    if accelerator in ("auto", "cuda", "mlx") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if accelerator == "cuda":
        raise UserError("hardware.accelerator is cuda but no CUDA GPU is visible; use --hardware.accelerator cpu")
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    if accelerator == "mps":
        raise UserError("hardware.accelerator is mps but MPS is not available; use --hardware.accelerator cpu")
    return torch.device("cpu")


def wrap_model(model, cfg, device):
    """DDP or FSDP2 under torchrun, activation checkpointing and torch.compile by config."""
    h = cfg.hardware
    if h.attention == "flash_attn":
        from torch_model.flash import enable_flash_attn

        enable_flash_attn(model)
    if h.activation_checkpointing:
        for block in model.model.layers:
            block.forward = _checkpointed(block.forward)
    if dist.is_initialized() and h.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
    elif dist.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.training.compile and device.type == "cuda":
        model = torch.compile(model)
    return model


def _checkpointed(forward):
    from torch.utils.checkpoint import checkpoint

    return lambda *args: checkpoint(forward, *args, use_reentrant=False)


@torch.no_grad()
def evaluate(model, batches, device, autocast) -> float:
    losses = []
    for x, y in batches:
        with autocast():
            losses.append(model(torch.from_numpy(x).to(device), targets=torch.from_numpy(y).to(device)).item())
    return float(np.mean(losses))


def sample(model, tokenizer, prompt: str, n_tokens: int) -> str:
    ids = tokenizer.encode(prompt)
    return prompt + tokenizer.decode(list(generate(unwrap(model), ids, n_tokens, eos_id=tokenizer.eos_id)))


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_train_args(__doc__, argv)
    cfg = load_train_config(args.config, overrides)
    t = cfg.training
    world, rank, local_rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), 0
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = pick_device(cfg.hardware.accelerator, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    is_main = rank == 0
    say = print if is_main else (lambda *a, **k: None)
    steps = total_steps(t, world)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    if args.dry_run:
        memory = (
            torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else system_memory_bytes()
        )
        label = f"torch {device} ({device_name})"
        report, fits = dry_run_report(cfg, steps, world, label, memory, loss_chunk_bytes(device.type))
        print(report)
        if not fits:
            raise SystemExit(1)
        return

    data = prepare_data(cfg.data, progress=is_main)
    tokenizer = data.tokenizer
    data.check_model_vocab(cfg.model.vocab_size)
    start = resolve_start(cfg, args.resume, world)
    model = build_model(cfg.model, start.weights, device=device)  # fp32 master weights; bf16 via autocast
    model = wrap_model(model, cfg, device)  # before the optimizer: FSDP2 replaces the parameters
    optimizer = make_optimizer(model, t)
    load_optimizer_state(model, optimizer, start.optimizer, start.step)
    del start.weights, start.optimizer
    use_bf16 = t.dtype == "bfloat16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    train_loader = BatchLoader(data.tokens("train"), t.seq_len, t.batch_size, t.seed, rank, world, t.grad_accum)
    fixed_val = val_batches(data.tokens("val"), t.seq_len, t.batch_size, t.eval_batches, seed=t.seed)

    tokenizer_dir = data.tokenizer_dir
    log = None
    if is_main:
        log = MetricsLog(Path(cfg.output.logs) / cfg.output.run_name, resume_step=start.step)
    say(
        f"training {cfg.output.run_name}: {steps} steps on torch {device} ({device_name}), {world} process(es); "
        f"start {start.source} at step {start.step}"
    )
    tokens_per_step = t.batch_size * t.grad_accum * t.seq_len * world
    peak = peak_flops(device_name, t.dtype) if device.type == "cuda" else None
    flops_tok = flops_per_token(cfg.model, t.seq_len)
    meter = Throughput(start.step, steps)
    tokens_seen, loss_value, lr = start.tokens_seen, float("nan"), lr_at(start.step, t, steps)
    wall_start = time.time() - start.state.get("wall_time", 0.0)

    def save(name: str, step: int) -> Path | None:
        weights, moments = model_state(model), optimizer_state(model, optimizer)  # FSDP: collective, all ranks
        if not is_main:
            return None
        state = trainer_state(cfg, step, tokens_seen, lr, loss_value, "torch", world, time.time() - wall_start)
        return write_checkpoint(cfg, name, weights, moments, state, tokenizer_dir, tokenizer.eos_id, tokenizer.bos_id)

    clip = t.grad_clip if t.grad_clip > 0 else float("inf")  # inf: measure the norm, clip nothing
    bar = tqdm(total=steps, initial=start.step, disable=not is_main, unit="step", dynamic_ncols=True)
    model.train()
    with StopSignal() as stop:
        for step in range(start.step, steps):
            lr = lr_at(step, t, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(t.grad_accum):
                x, y = (torch.from_numpy(a).to(device, non_blocking=True) for a in train_loader.batch(step, micro))
                last = micro == t.grad_accum - 1
                sync = (
                    model.no_sync()
                    if world > 1 and not last and hasattr(model, "no_sync")
                    else contextlib.nullcontext()
                )
                with sync:  # DDP: gradients are all-reduced only on the last micro-batch
                    with autocast():
                        loss = model(x, targets=y) / t.grad_accum
                    loss.backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if world > 1:
                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            loss_value, grad_norm_value = loss_sum.item(), grad_norm.item()
            if not (np.isfinite(loss_value) and np.isfinite(grad_norm_value)):
                optimizer.zero_grad(set_to_none=True)
                if t.on_nonfinite == "stop":
                    bar.close()
                    raise nonfinite_error(step + 1, loss_value, grad_norm_value)
                if is_main:
                    tqdm.write(f"step {step + 1}: non-finite loss or gradient, update skipped")
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            tokens_seen += tokens_per_step
            bar.update(1)
            if is_main and (done % t.log_every == 0 or done == steps):
                tok_s, eta = meter.update(done, tokens_per_step)
                mfu = tok_s * flops_tok / world / peak if peak else None
                mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
                elapsed = time.time() - wall_start
                tqdm.write(
                    log.train(done, steps, loss_value, lr, tokens_seen, tok_s, mfu, mem, grad_norm_value, elapsed, eta)
                )
            if t.eval_every and (done % t.eval_every == 0 or done == steps):
                model.eval()
                val = evaluate(model, fixed_val, device, autocast)
                text = sample(model, tokenizer, t.sample_prompt, t.sample_tokens)  # all ranks: FSDP gathers
                if is_main:
                    tqdm.write(log.val(done, val, tokens_seen, text))
                model.train()
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
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
