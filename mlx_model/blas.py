"""MLX's Linux CPU wheel ships a reference BLAS (~4 GFLOP/s matmul). Debian's OpenBLAS, preloaded into
the MLX process only, is 15-60x faster. Never preload it into a process that runs torch: it would
replace torch's MKL GEMM and slow torch down several times."""

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
    """On Linux, re-exec this MLX-only process with OpenBLAS preloaded, or say how to get it."""
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
    if {"amx_tile", "avx512_bf16"} & _cpu_flags():
        # Debian's OpenBLAS 0.3.21 picks its generic kernel on AMX-class Xeons; this one is 6x faster there.
        env.setdefault("OPENBLAS_CORETYPE", "SapphireRapids")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
