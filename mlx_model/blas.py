"""MLX's Linux CPU wheel ships a reference BLAS. Debian's OpenBLAS, preloaded into the MLX process only, is
an order of magnitude faster (docs/benchmarks.md). Never preload it into a process that runs torch: it would
replace torch's MKL GEMM and slow torch down several times.

The same re-exec tells glibc's malloc to keep freed memory for reuse (MALLOC_MMAP_MAX_=0,
MALLOC_TRIM_THRESHOLD_ 64 GiB). MLX's CPU backend takes every array from malloc, and glibc serves
blocks over 32 MB with fresh mmaps, so each vocabulary-sized array of every step paid tens of thousands
of first-touch page faults, a large share of a step's time (docs/benchmarks.md). The
process's resident memory then stays at its peak instead of shrinking between steps."""

from __future__ import annotations

import os
import platform
import sys

OPENBLAS_PATHS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
)
FIX = "sudo apt-get install libopenblas0-pthread"


def find_openblas() -> str | None:
    return next((p for p in OPENBLAS_PATHS if os.path.exists(p)), None)


def _cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def ensure_fast_blas() -> None:
    """On Linux, re-exec this MLX-only process with OpenBLAS preloaded and malloc keeping freed memory, or
    say how to get OpenBLAS."""
    if platform.system() != "Linux" or os.environ.get("TINY_LLAMA_BLAS") == "reference":
        return
    if "openblas" in os.environ.get("LD_PRELOAD", ""):
        return
    lib = find_openblas()
    if lib is None:
        print(f"note: MLX on Linux uses a slow reference BLAS; `{FIX}` makes it 15x+ faster", file=sys.stderr)
        return
    env = dict(os.environ, TINY_LLAMA_BLAS="openblas")
    env["LD_PRELOAD"] = ":".join(filter(None, [lib, os.environ.get("LD_PRELOAD")]))
    env.setdefault("MALLOC_MMAP_MAX_", "0")  # large blocks from the heap, reused without page faults
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(64 << 30))  # and never handed back between steps
    if {"amx_tile", "avx512_bf16"} & _cpu_flags():
        # Debian's OpenBLAS 0.3.21 picks its generic kernel on AMX-class Xeons; this one is far faster there.
        env.setdefault("OPENBLAS_CORETYPE", "SapphireRapids")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
