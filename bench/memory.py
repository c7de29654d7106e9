"""`--dry-run`'s memory estimate against the peak a real run reports, on both backends.

    python bench/memory.py                               # config.yaml and the 124M config, shortened (~10 min here)
    python bench/memory.py --config config.yaml --backend torch --steps 3 --json out.json

Each case runs the trainer twice in fresh processes, exactly as a user would: once with --dry-run (its
"about X" figure) and once for a few steps on the built-in corpus (the largest `mem` its log line showed,
from metrics.jsonl: the CUDA allocator's peak on a GPU, MLX's allocator peak, the process's peak resident
set for torch off CUDA). The goal is an estimate within 20% of what the run shows.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"torch": "train_cuda.py", "mlx": "train_mlx.py"}
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
# The shortened runs: the built-in corpus, a few steps, no eval, checkpoint or sample in between.
CASES = {
    "config.yaml": ["--config", "config.yaml"],
    "gpt2-124m (batch 2 x 1024)": [
        "--config", "configs/gpt2-124m.yaml", "--data.dataset", "builtin", "--data.val_fraction", "0.05",
        "--training.batch_size", "2", "--training.grad_accum", "1", "--training.dtype", "float32",
        "--training.compile", "false", "--hardware.distributed", "none", "--hardware.accelerator", "auto",
    ],
}  # fmt: skip


def parse_bytes(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+) ?([KMGT]?B)", text.strip()).groups()
    return float(value) * UNITS[unit]


def measure(backend: str, args: list[str], workdir: Path, steps: int = 3, cache: Path | None = None) -> dict:
    """{"estimate": bytes, "measured": bytes, "ratio": estimate / measured} for one trainer and config;
    `cache`: the prepared-data cache (default: a fresh one in workdir)."""
    out = workdir / backend
    argv = [
        sys.executable, SCRIPTS[backend], *args,
        "--data.cache_dir", str(cache or workdir / "cache"), "--output.dir", str(out / "ckpt"),
        "--output.logs", str(out / "logs"), "--output.run_name", "mem", "--output.overwrite", "true",
        "--training.max_steps", str(steps), "--training.max_tokens", "0", "--training.log_every", "1",
        "--training.eval_every", "1000000", "--training.save_every", "1000000", "--training.sample_tokens", "0",
        "--training.warmup_steps", "0",
    ]  # fmt: skip
    dry = subprocess.run([*argv, "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    found = re.search(r"-> about ([\d.]+ ?[KMGT]?B)", dry.stdout)
    if not found:
        raise RuntimeError(f"{backend} --dry-run printed no estimate:\n{dry.stdout}\n{dry.stderr[-2000:]}")
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"{backend} run failed ({run.returncode}):\n{run.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "logs" / "mem" / "metrics.jsonl").read_text().splitlines()]
    measured = max(r.get("mem_gb") or 0 for r in records) * 1e9
    estimate = parse_bytes(found.group(1))
    return {"estimate": estimate, "measured": measured, "ratio": estimate / measured if measured else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=list(CASES), action="append", help="a case (default: all; repeatable)")
    p.add_argument("--backend", choices=list(SCRIPTS), action="append", help="default: both (repeatable)")
    p.add_argument("--steps", type=int, default=3, help="training steps per run (default: %(default)s)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.config or list(CASES):
            for backend in args.backend or list(SCRIPTS):
                r = measure(backend, CASES[case], Path(tmp) / re.sub(r"\W+", "_", case), args.steps)
                results.append({"case": case, "backend": backend, **r})
                print(
                    f"{case:28} {backend:5} estimate {r['estimate'] / 1e9:6.2f} GB  "
                    f"measured {r['measured'] / 1e9:6.2f} GB  estimate/measured {r['ratio']:.2f}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
