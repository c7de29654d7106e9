"""What a training step holds under torch.compile against eager mode, on the CPU: the factor --dry-run applies
to its activation estimate for compiled runs (torch_model.wrap.COMPILED_ACTIVATIONS).

    python bench/compile_memory.py                              # d_model 256/512/768, vocab 512, 16 x 256, fp32
    python bench/compile_memory.py --sizes 256x2 --json out.json

Inductor's partitioner recomputes cheap elementwise results (norms, SwiGLU's gate, RoPE) in the backward
instead of saving them, so a compiled step keeps fewer activations. Each mode runs in a fresh process with
glibc's mmap threshold pinned low, so every tensor is returned to the OS when freed and the resident set
follows what is alive; after three warm-up steps (compilation) the peak is reset (/proc/self/clear_refs)
and one forward + backward is measured: its growth over the resident set before it. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VOCAB, BATCH, SEQ = 512, 16, 256  # a small vocab: the step's growth is the layers' activations


def status_bytes(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def measure_step(mode: str, d_model: int, n_layers: int) -> int:
    """In this process: bytes a forward + backward adds to the resident set, eager or compiled."""
    import dataclasses

    import torch
    from scaling import Case, load  # bench/scaling.py: its shape of a model of this width

    from tinyllama.core.architecture import init_weights
    from tinyllama.torch_model.loss import keep_eager_under_compile
    from tinyllama.torch_model.state import build_model

    sized = load(str(ROOT / "configs" / "smoke.yaml"), Case("torch", "cpu", d_model, SEQ, BATCH)).model
    cfg = dataclasses.replace(sized, n_layers=n_layers, vocab_size=VOCAB)
    model = build_model(cfg, init_weights(cfg, 0))
    if mode == "compiled":
        keep_eager_under_compile()  # as torch_model/wrap.py does
    step = torch.compile(model) if mode == "compiled" else model
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator) for _ in range(2))
    for _ in range(4):  # three warm-ups (compilation), then the measured step
        if _ == 3:
            Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
            before = status_bytes("VmRSS")
        step(x, targets=y).backward()
        model.zero_grad(set_to_none=True)
    return status_bytes("VmHWM") - before


def run(d_model: int, n_layers: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # every tensor mmapped: freed is returned
    growth = {}
    for mode in ("eager", "compiled"):
        cmd = [sys.executable, __file__, "--child", mode, f"{d_model}x{n_layers}"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        growth[mode] = int(out.stdout.split()[-1])
    return {"d_model": d_model, "n_layers": n_layers, **growth, "ratio": growth["compiled"] / growth["eager"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["256x2", "512x4", "768x6"], help="d_model x n_layers")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        d_model, n_layers = map(int, args.child[1].split("x"))
        print(measure_step(args.child[0], d_model, n_layers))
        return
    rows = []
    for size in args.sizes:
        row = run(*map(int, size.split("x")))
        rows.append(row)
        eager, compiled = row["eager"] / 1e6, row["compiled"] / 1e6
        print(f"d_model {row['d_model']}, {row['n_layers']} layers, {BATCH} x {SEQ}: eager {eager:.0f} MB, "
              f"compiled {compiled:.0f} MB, compiled / eager {row['ratio']:.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
