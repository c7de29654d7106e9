"""mlx_model.blas.ensure_fast_blas: the Linux MLX process re-executes itself with OpenBLAS preloaded and
glibc's malloc keeping freed memory; nothing happens elsewhere or when already done."""

from __future__ import annotations

import os
import sys

import pytest

import tinyllama.mlx_model.blas as blas


class Reexec(Exception):
    pass


@pytest.fixture
def execve(monkeypatch):
    calls = []

    def fake(path, argv, env):
        calls.append((path, argv, env))
        raise Reexec

    monkeypatch.setattr(blas.os, "execve", fake)
    monkeypatch.setattr(blas.platform, "system", lambda: "Linux")
    monkeypatch.setattr(blas, "find_openblas", lambda: "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")
    monkeypatch.setattr(blas, "_cpu_flags", lambda: {"avx2"})
    for key in ("LD_PRELOAD", "TINY_LLAMA_BLAS", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "OPENBLAS_CORETYPE"):
        monkeypatch.delenv(key, raising=False)
    return calls


def test_linux_reexec_preloads_openblas_and_keeps_freed_memory(execve):
    with pytest.raises(Reexec):
        blas.ensure_fast_blas()
    ((path, argv, env),) = execve
    assert path == sys.executable and argv[1:] == sys.argv
    assert env["LD_PRELOAD"].endswith("libopenblas.so.0") and env["TINY_LLAMA_BLAS"] == "openblas"
    assert env["MALLOC_MMAP_MAX_"] == "0" and int(env["MALLOC_TRIM_THRESHOLD_"]) == 64 << 30
    assert "OPENBLAS_CORETYPE" not in env  # only AMX-class Xeons get a core type


def test_a_users_malloc_settings_win(execve, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    with pytest.raises(Reexec):
        blas.ensure_fast_blas()
    env = execve[0][2]
    assert env["MALLOC_MMAP_MAX_"] == "65536" and env["MALLOC_TRIM_THRESHOLD_"] == "131072"


@pytest.mark.parametrize("situation", ["macos", "already preloaded", "reference asked for"])
def test_no_reexec(execve, monkeypatch, situation):
    if situation == "macos":
        monkeypatch.setattr(blas.platform, "system", lambda: "Darwin")
    elif situation == "already preloaded":
        monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")
    else:
        monkeypatch.setenv("TINY_LLAMA_BLAS", "reference")
    blas.ensure_fast_blas()
    assert execve == [] and "MALLOC_MMAP_MAX_" not in os.environ
