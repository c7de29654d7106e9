"""Train the Llama with PyTorch: CUDA GPUs (bf16, flash SDPA, torch.compile), also MPS and CPU.

    python train_cuda.py --config configs/gpt2-124m.yaml
    torchrun --nproc-per-node 8 train_cuda.py --config configs/gpt2-124m.yaml        # DDP
    torchrun --nproc-per-node 8 train_cuda.py --config ... --hardware.distributed fsdp  # FSDP2
    # several machines: the same line on each (docs/training.md)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint gpu-a:29500 --rdzv-id r1 train_cuda.py
    python train_cuda.py --config config.yaml --resume auto     # also resumes a train_mlx.py checkpoint

Same skeleton, log lines and checkpoints as train_mlx.py. Any config key: --section.key value.
"""

from __future__ import annotations

if __name__ == "__main__":
    from tinyllama.core.cli import exit_on_interrupt

    exit_on_interrupt()  # Ctrl-C while importing torch: one line, no traceback

import contextlib
import os
import sys

import torch
import torch.distributed as dist

from tinyllama.core.backend import pick
from tinyllama.core.cli import UserError, human_bytes, run_cli
from tinyllama.core.generate import mean_loss
from tinyllama.core.hardware import cpu_name, peak_flops, rss_bytes, system_memory_bytes
from tinyllama.core.loop import Device, Run, start_together
from tinyllama.core.training import estimate_memory, load_train_config, parse_train_args
from tinyllama.data.prepare import prepare_data
from tinyllama.torch_model.generate import as_backend, peak_memory
from tinyllama.torch_model.muon import slow_bf16_matmul
from tinyllama.torch_model.optim import load_optimizer_state, make_optimizer, optimizer_state, restore, snapshot
from tinyllama.torch_model.state import build_model, measured_gemm_flops, model_state, resolve_device, weight_norm
from tinyllama.torch_model.wrap import memory_traits, wrap_model


def runtime_rss() -> int:
    """What this process holds before the model exists, as training will: torch's optimizers import
    torch._dynamo (tens of MB) at their first step, so --dry-run imports it before measuring too."""
    import torch._dynamo  # noqa: F401

    return rss_bytes()


ABSENT = {"cuda": ("no CUDA GPU is visible", "a CUDA GPU"), "mps": ("MPS is not available", "MPS")}


def not_here(cfg, request: str, traits) -> str:
    """--dry-run on a machine without the device the config asks for (planning a GPU run from a laptop): what
    that device needs for the plan, and what this machine's CPU would need instead."""
    need = estimate_memory(cfg, traits)["total"]
    here = estimate_memory(cfg, memory_traits(cfg, torch.device("cpu"), runtime_rss()))["total"]
    have = system_memory_bytes()
    lacking, device = ABSENT[request]
    return (
        f"{lacking} on this machine, so the run cannot start here. On {device} it needs about {human_bytes(need)}: "
        f"{human_bytes(need / 0.9)} or more of memory per process. On this machine's CPU ({cpu_name()}, "
        f"{human_bytes(have)}), with --hardware.accelerator cpu: about {human_bytes(here)} "
        f"({'fits' if here <= 0.9 * have else 'does not fit'})"
    )


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_train_args(__doc__, argv, "train_cuda.py")
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    nccl = torch.cuda.is_available()
    comm = torch.device("cuda", local_rank) if nccl else torch.device("cpu")  # where collectives' tensors live
    if world > 1:  # first: a rank that fails to start below must reach the others, not leave them in the rendezvous
        if nccl:
            torch.cuda.set_device(comm)
        dist.init_process_group("nccl" if nccl else "gloo")

    def any_rank(flag: bool) -> bool:
        if world == 1:
            return flag
        value = torch.tensor([int(flag)], device=comm)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(values):  # every rank's small int64 vector, in rank order
        local = torch.from_numpy(values).to(comm)
        every = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(every, local)
        return torch.stack(every).cpu().numpy()

    cfg = start_together(lambda: load_train_config(args.config, overrides, args.resume), world, gather)
    t = cfg.training
    if cfg.hardware.accelerator == "mlx":
        raise UserError("hardware.accelerator is mlx: train with train_mlx.py (or train.py), or pass auto/cuda/mps/cpu")
    _, request = pick(cfg.hardware.accelerator)
    try:
        device = resolve_device(request, local_rank)
        absent = False
    except UserError:
        if not args.dry_run:
            raise
        device, absent = torch.device(request), True  # --dry-run plans for the device asked for, from any machine
    cuda = device.type == "cuda" and not absent
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    name = torch.cuda.get_device_name(device) if cuda else cpu_name()
    memory = torch.cuda.get_device_properties(device).total_memory if cuda else system_memory_bytes()
    peak = peak_flops(name, t.dtype, tf32=True) if cuda else None  # TF32 matmuls are on (above)
    measured = peak is None and not args.dry_run
    peak = measured_gemm_flops(device, t.dtype) if measured else peak  # a CPU or an unlisted GPU: ~1 s
    runtime = 0 if device.type == "cuda" else runtime_rss()  # off CUDA the mem figure is the process's RSS
    traits = memory_traits(cfg, device, runtime)
    if absent:
        device_info = Device(f"{device} (none here)", 0, memory_traits=traits, absent=not_here(cfg, request, traits))
    else:
        device_info = Device(f"{device} ({name})", memory, peak, measured, memory_traits=traits)
    run = Run(cfg, "torch", device_info, rank, world, any_rank, gather)
    if t.optimizer == "muon" and t.muon_precision == "bfloat16" and slow_bf16_matmul(device):
        run.say(f"warning: this CPU ({name}) has no bf16 matmul instructions (AMX, AVX512-BF16): Newton-Schulz in "
                "bf16 runs many times slower than in fp32 here; set training.muon_precision float32")  # fmt: skip
    if args.dry_run:
        return run.dry_run()

    run.claim(args.resume)  # output.dir: locked, checked, never mixed with an earlier run
    data = run.together(lambda: prepare_data(cfg.data, progress=run.is_main, launch=run.is_node_main))
    start = run.prepare(data, args.resume)  # where every rank starts (the same, checked), batches, val set
    model = build_model(cfg.model, start.weights, device=device)  # fp32 master weights; bf16 via autocast
    model = wrap_model(model, cfg, device)  # before the optimizer: FSDP2 replaces the parameters
    optimizer = make_optimizer(model, t)
    load_optimizer_state(model, optimizer, start.optimizer, start.updates)
    del start.weights, start.optimizer
    bf16 = t.dtype == "bfloat16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def to_device(*arrays):
        if not cuda:
            return tuple(torch.from_numpy(a).to(device) for a in arrays)
        # page-locked: the copy is queued behind the running step and the CPU goes on at once
        return tuple(torch.from_numpy(a).pin_memory().to(device, non_blocking=True) for a in arrays)

    def step_batches(step: int):
        """Every micro-batch of a step, each (x, y) or (x, y, segments), and the step's loss denominator."""
        return [to_device(*run.batch(step, micro)) for micro in range(t.grad_accum)], *to_device(run.denominator(step))

    @torch.no_grad()
    def batch_loss(x, y, *segments) -> float:
        x, y, *segments = to_device(x, y, *segments)
        with autocast():
            return model(x, targets=y, segments=segments[0] if segments else None).item()

    def evaluate(windows) -> float:
        return mean_loss(batch_loss, windows, t.batch_size)

    def capture():  # FSDP: a collective, so every rank calls it
        return model_state(model), optimizer_state(model, optimizer)

    run.attach(evaluate, as_backend(model).generate, capture, peak_memory, capture_on_every_rank=True)
    clip = t.grad_clip if t.grad_clip > 0 else float("inf")  # inf: measure the norm, clip nothing
    model.train()
    ahead = {}  # the next step's batches, on the device before this step's results are read
    for step in run.steps():
        for group in optimizer.param_groups:
            group["lr"] = run.lr(step)
        micro_batches, denominator = ahead.pop(step, None) or step_batches(step)  # denominator: all ranks
        loss_sum = torch.zeros((), device=device)
        for micro, (x, y, *segments) in enumerate(micro_batches):  # segments: packed conversations
            last = micro == t.grad_accum - 1
            sync = model.no_sync() if world > 1 and not last and hasattr(model, "no_sync") else contextlib.nullcontext()
            with sync:  # DDP: gradients are all-reduced only on the last micro-batch
                with autocast():
                    segments = segments[0] if segments else None
                    loss = model(x, targets=y, segments=segments, denominator=denominator, training=t)
                    loss = loss / t.grad_accum
                loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        if world > 1:
            dist.all_reduce(loss_sum)  # SUM: gloo has no AVG in older torch
            loss_sum /= world
        before = snapshot(model, optimizer) if t.on_nonfinite == "skip" else None
        optimizer.step()
        if step + 1 < run.total:  # the CPU reads the next batches from disk while the GPU runs this step
            ahead[step + 1] = step_batches(step + 1)
        # the step's one wait for the GPU: loss, gradient norm and the updated weights' norm in one read
        loss, norm, weights = torch.stack([loss_sum, grad_norm.float(), weight_norm(model)]).tolist()
        finite = run.finite(step, loss, norm, weights)
        if not finite:
            restore(model, optimizer, before)
        optimizer.zero_grad(set_to_none=True)
        run.end_step(step, loss, norm, skipped=not finite)
    run.finish()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
