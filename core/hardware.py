"""What the machine can do: peak FLOP/s for MFU, memory for --dry-run. Framework-free."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

# Dense peak TFLOP/s by device-name fragment (most specific first). Apple GPUs: fp32 ~= fp16 rate.
# Figures are vendors' published numbers (approximate for Apple); MFU is only as good as them.
PEAK_TFLOPS_BF16 = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "A10G": 70.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.2,
    "RTX 4080": 97.5,
    "RTX 3090": 71.0,
    "A6000": 154.8,
    "V100": 125.0,
    "T4": 65.0,
    "M4 Max": 18.4,
    "M4 Pro": 9.2,
    "M4": 4.3,
    "M3 Ultra": 28.0,
    "M3 Max": 16.4,
    "M3 Pro": 7.4,
    "M3": 4.1,
    "M2 Ultra": 27.2,
    "M2 Max": 13.6,
    "M2 Pro": 6.8,
    "M2": 3.6,
    "M1 Ultra": 21.2,
    "M1 Max": 10.6,
    "M1 Pro": 5.3,
    "M1": 2.6,
}
# fp32 without tensor cores / TF32 on NVIDIA; Apple's GPU runs fp32 at about its fp16 rate.
FP32_FRACTION = {"H200": 0.068, "H100": 0.068, "A100": 0.0625, "RTX": 0.5, "A6000": 0.25, "V100": 0.125, "T4": 0.125}


# TF32 tensor cores (Ampere and later) run fp32 matmuls at half the bf16 dense rate; V100 and T4 have none.
NO_TF32 = ("V100", "T4")


def peak_flops(device_name: str, dtype: str, tf32: bool = False) -> float | None:
    """Peak FLOP/s of a named device for `dtype` (fp32 matmuls on TF32 tensor cores when `tf32`), or None
    when unknown (MFU is then not shown)."""
    for fragment, tflops in PEAK_TFLOPS_BF16.items():
        if fragment in device_name:
            if dtype == "float32" and not fragment.startswith("M"):
                if tf32 and fragment not in NO_TF32:
                    return tflops * 0.5 * 1e12
                fraction = next((f for k, f in FP32_FRACTION.items() if k in fragment), 0.5)
                return tflops * fraction * 1e12
            return tflops * 1e12
    return None


def measured_peak_flops(matmul: Callable[[], object], n: int, seconds: float = 1.0) -> float:
    """FLOP/s of one dense n x n matmul on this device over about `seconds` after a warm-up: the best of ten
    short bursts, so a moment of load from other processes lowers the figure less. `matmul` computes one
    product and waits for it."""
    matmul()
    best, end = 0.0, time.perf_counter() + seconds
    while not best or time.perf_counter() < end:
        runs, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 10 or runs < 1:
            matmul()
            runs += 1
        best = max(best, 2 * n**3 * runs / elapsed)
    return best


# Matrix sizes the probe tries. A plain BLAS is fastest at the sizes that fit its caches, a tuned one at the
# largest. A GPU needs far larger products: at 1024 a launch and a sync outweigh the work (MLX's 1024 probe
# read a small fraction of an H200's bf16 rate; docs/benchmarks.md), and 8192 is still brief there.
CPU_GEMM_SIZES = (256, 512, 1024)
ACCELERATOR_GEMM_SIZES = (2048, 4096, 8192)


def best_gemm_flops(
    matmul_of_size: Callable[[int], Callable[[], object]], seconds: float = 1.0, sizes: tuple[int, ...] = CPU_GEMM_SIZES
) -> float:
    """The MFU reference where the table has no peak (a CPU, an unlisted GPU): the best dense matmul rate
    over a few sizes."""
    return max(measured_peak_flops(matmul_of_size(n), n, seconds / len(sizes)) for n in sizes)


def user_cache_dir() -> Path:
    """$TINYLLAMA_CACHE, else ~/.cache/tinyllama (XDG_CACHE_HOME respected): what outlives one project."""
    home = os.environ.get("TINYLLAMA_CACHE")
    return Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinyllama"


def remembered_gemm_flops(
    key: str, matmul_of_size: Callable[[int], Callable[[], object]], accelerator: bool = False
) -> float:
    """best_gemm_flops, remembered per machine and `key` (backend, device, dtype, threads) in the user cache's
    gemm-peaks.json: the first run measures for about a second, later ones briefly and keep the best figure
    seen, so start-up is shorter, and a figure measured while the machine was busy (which made MFU read over
    100%) is replaced by the next better one."""
    from tinyllama.core.fs import write_json

    file = user_cache_dir() / "gemm-peaks.json"
    try:
        known = json.loads(file.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    previous = known.get(key) if isinstance(known.get(key), float) else None
    sizes = ACCELERATOR_GEMM_SIZES if accelerator else CPU_GEMM_SIZES
    best = max(best_gemm_flops(matmul_of_size, 0.15 if previous else 1.0, sizes), previous or 0.0)
    if best != previous:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            write_json(file, {**known, key: best})
        except OSError:  # a read-only home: measured each time, as before
            pass
    return best


def apple_chip() -> str | None:
    if platform.system() != "Darwin":
        return None
    try:
        return subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def _proc_status_bytes(field: str) -> int | None:
    """A memory line of Linux's /proc/self/status ("VmHWM:  1234 kB") in bytes; None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _max_rss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if platform.system() == "Darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def peak_rss_bytes() -> int:
    """This process's peak resident set so far: the memory figure on a CPU, where no allocator counts.
    Linux: VmHWM, since ru_maxrss also carries the peak of the process this one was exec'd from (a
    trainer started by pytest or a large parent would report the parent's memory)."""
    peak = _proc_status_bytes("VmHWM")
    return peak if peak is not None else _max_rss_bytes()


def rss_bytes() -> int:
    """This process's resident set now (Linux: VmRSS; elsewhere its peak so far, the closest portable figure)."""
    now = _proc_status_bytes("VmRSS")
    return now if now is not None else _max_rss_bytes()


def system_memory_bytes() -> int:
    """Physical memory (unified memory on Apple Silicon)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def cpu_name() -> str:
    if platform.system() == "Linux":
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return apple_chip() or platform.processor() or platform.machine()
