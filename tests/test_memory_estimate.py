"""`--dry-run`'s memory estimate is within 20% of the peak a real run's log line shows, on both backends.

Small configs here (a few seconds each); bench/memory.py runs the same measurement on config.yaml and the
124M config. Each run is a fresh process, as a user's: the torch figure off CUDA is the process's peak
resident set (the estimate counts the runtime it measures at start-up), MLX's is its allocator's peak."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from helpers import ROOT, bench_module

from tinyllama.core.config import load_config
from tinyllama.core.training import MemoryTraits, estimate_memory

bench_memory = bench_module("memory")

SHAPES = {  # a vocab-512 model whose activations outweigh the runtime (config.yaml's: bench/memory.py)
    "d512 L4 b16x256": [
        "--config", "configs/smoke.yaml", "--model.d_model", "512", "--model.d_ff", "1376", "--model.n_layers", "4",
        "--model.n_heads", "8", "--model.n_kv_heads", "4", "--model.max_seq_len", "256", "--training.seq_len", "256",
        "--training.batch_size", "16",
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_dry_run_estimate_within_20_percent_of_the_measured_peak(backend, shape, tmp_path, data_cache):
    result = bench_memory.measure(backend, SHAPES[shape], tmp_path, steps=2, cache=data_cache)
    assert 0.8 <= result["ratio"] <= 1.2, result


def test_estimate_grows_with_what_a_run_holds():
    """The parts move the way the memory does: activations with tokens and layers, the optimizer state with
    the parameter count, the runtime only where it is passed; gradients and activations are not summed."""
    cfg = load_config(ROOT / "configs" / "smoke.yaml", {})
    base = estimate_memory(cfg)
    more = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, batch_size=2 * cfg.training.batch_size))
    assert estimate_memory(more)["activations"] == pytest.approx(2 * base["activations"])
    deeper = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_layers=4))
    assert estimate_memory(deeper)["activations"] == pytest.approx(2 * base["activations"])
    assert estimate_memory(deeper)["optimizer state"] > base["optimizer state"]
    saved = base["activations"] + base["logits"]
    fixed = base["weights"] + base["optimizer state"]
    assert base["total"] == pytest.approx(1.15 * (fixed + max(base["gradients"], saved)))
    lazy = estimate_memory(cfg, MemoryTraits(lazy_graph=True))["total"]  # MLX: gradients and activations alive together
    assert lazy == pytest.approx(1.15 * (fixed + base["gradients"] + saved))
    assert "runtime" not in base
    with_runtime = estimate_memory(cfg, MemoryTraits(runtime_bytes=300 * 2**20))
    assert with_runtime["total"] == pytest.approx(base["total"] + 300 * 2**20)


@pytest.mark.slow  # a --dry-run in a fresh process
def test_torch_dry_run_counts_the_process_runtime_off_cuda():
    """On a CPU the log line's mem is the process's RSS, so the estimate includes what is already resident:
    this process's own, not that of the process it was started from (here a large pytest)."""
    argv = [sys.executable, "train_cuda.py", "--config", "configs/smoke.yaml", "--dry-run"]
    out = subprocess.run([*argv, "--hardware.accelerator", "cpu"], cwd=ROOT, capture_output=True, text=True).stdout
    runtime = bench_memory.parse_bytes(out.split("runtime ")[1].split(" ->")[0])
    assert 100e6 < runtime < 1.5e9  # Python + torch, not the parent's memory


def test_peak_rss_is_this_programs_own():
    """ru_maxrss survives exec on Linux; the figure the trainers and infer show must not."""
    code = "from tinyllama.core.hardware import peak_rss_bytes, rss_bytes; print(peak_rss_bytes(), rss_bytes())"
    ballast = bytearray(600 * 2**20)  # the parent holds 600 MB when it starts the child
    ballast[::4096] = b"x" * len(ballast[::4096])
    peak, now = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split())
    assert 0 < now <= peak < 400e6
    del ballast


def test_the_gemm_peak_is_measured_once_per_machine_then_only_improved(tmp_path, monkeypatch):
    """The MFU reference: the first start measures ~1 s, later ones ~0.15 s and keep the best figure, so a
    figure taken on a busy machine (MFU over 100%) is replaced by a better one."""
    import json
    import time

    from tinyllama.core.hardware import remembered_gemm_flops

    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path))
    speed = {"delay": 2e-3}

    def matmul_of_size(n):
        return lambda: time.sleep(speed["delay"] * (n / 1024) ** 3)

    start = time.perf_counter()
    slow = remembered_gemm_flops("k", matmul_of_size)
    first = time.perf_counter() - start
    speed["delay"] = 1e-3  # a quieter machine: twice the rate
    start = time.perf_counter()
    fast = remembered_gemm_flops("k", matmul_of_size)
    second = time.perf_counter() - start
    assert first > 0.9 and second < 0.5 and fast > 1.5 * slow
    speed["delay"] = 4e-3  # busy again: the better figure stays
    assert remembered_gemm_flops("k", matmul_of_size) == fast
    assert json.loads((tmp_path / "gemm-peaks.json").read_text()) == {"k": fast}


def test_a_gpu_is_probed_with_products_large_enough_to_hide_launch_and_sync(tmp_path, monkeypatch):
    """A GPU's small matmuls are bound by a fixed cost per call, not by its arithmetic: the probe of an
    accelerator uses sizes where that cost vanishes, so MFU is not measured against a figure far too low."""
    import time

    import mlx.core as mx
    import torch

    from tinyllama.core.hardware import best_gemm_flops, remembered_gemm_flops
    from tinyllama.mlx_model import state as mlx_state
    from tinyllama.torch_model import state as torch_state

    monkeypatch.setenv("TINYLLAMA_CACHE", str(tmp_path))
    rate, per_call = 4e13, 2e-4  # FLOP/s, seconds of launch and sync

    def matmul_of_size(n):
        return lambda: time.sleep(per_call + 2 * n**3 / rate)

    assert best_gemm_flops(matmul_of_size, seconds=0.3) < 0.5 * rate  # a CPU's sizes
    (tmp_path / "gemm-peaks.json").write_text('{"gpu sizes": 1.0}')  # measured before: the short probe (~0.15 s)
    assert remembered_gemm_flops("gpu sizes", matmul_of_size, accelerator=True) > 0.9 * rate
    asked = []

    def remembered(key, matmul, accelerator=False):
        asked.append(accelerator)

    for module in (torch_state, mlx_state):
        monkeypatch.setattr(module, "remembered_gemm_flops", remembered)
    torch_state.measured_gemm_flops(torch.device("cpu"), "float32")
    mlx_state.measured_gemm_flops("float32")  # MLX on Linux: its CPU
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))  # a Mac's GPU, or mlx[cuda]'s
    monkeypatch.setattr(mlx_state, "device_name", lambda: "Apple M9")
    mlx_state.measured_gemm_flops("float32")
    assert asked == [False, False, True]


@pytest.mark.slow  # compiles a small model (~30 s)
def test_a_compiled_step_keeps_what_the_estimate_scales_activations_by():
    """--dry-run scales the activations of a compiled torch run by COMPILED_ACTIVATIONS: the measured ratio
    of a compiled to an eager step's memory growth (bench/compile_memory.py, fresh processes) is that."""
    from tinyllama.torch_model.wrap import COMPILED_ACTIVATIONS

    row = bench_module("compile_memory").run(256, 2)
    assert row["eager"] > 100e6, row  # the step's activations were seen at all
    assert abs(row["ratio"] - COMPILED_ACTIVATIONS) < 0.06, row
    cfg = load_config(ROOT / "configs" / "smoke.yaml", {})
    scaled = estimate_memory(cfg, MemoryTraits(activation_scale=COMPILED_ACTIVATIONS))["activations"]
    assert scaled == pytest.approx(COMPILED_ACTIVATIONS * estimate_memory(cfg)["activations"])


def test_a_torch_step_is_counted_as_it_will_run_on_its_device():
    """train_cuda.py compiles on CUDA only: there the estimate takes the compiled loss kernel and fewer
    activations; on the CPU the eager ones. Weights and gradients are fp32 under bf16 autocast either way."""
    import torch

    from tinyllama.torch_model.loss import held_bytes
    from tinyllama.torch_model.wrap import COMPILED_ACTIVATIONS, memory_traits

    cfg = load_config(ROOT / "configs" / "gpt2-124m.yaml", {"training.batch_size": 16})
    assert cfg.training.compile and cfg.training.dtype == "bfloat16"
    gpu, cpu = memory_traits(cfg, torch.device("cuda"), 0), memory_traits(cfg, torch.device("cpu"), 0)
    assert gpu.activation_scale == COMPILED_ACTIVATIONS and cpu.activation_scale == 1.0
    assert gpu.loss_bytes == held_bytes(16 * 1024, 50304, 768, "cuda", "bfloat16", compiled=True)
    assert cpu.loss_bytes == held_bytes(16 * 1024, 50304, 768, "cpu", "bfloat16", compiled=False)
    eager = load_config(ROOT / "configs" / "gpt2-124m.yaml", {"training.batch_size": 16, "training.compile": False})
    eager_gpu = memory_traits(eager, torch.device("cuda"), 0)
    assert eager_gpu.activation_scale == 1.0 and eager_gpu.loss_bytes > gpu.loss_bytes
    n = estimate_memory(cfg, gpu)["weights"] / 4
    assert estimate_memory(cfg, gpu)["gradients"] == 4 * n == 2 * estimate_memory(cfg)["weights"]  # MLX: bf16
