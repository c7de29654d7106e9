"""Soak test: the smoke config trained under a SIGKILL every ~--every seconds, resumed after each, for --minutes.

    python bench/soak.py --backend torch --minutes 20 --every 30
    python bench/soak.py --backend mlx --minutes 20 --every 30

Prints every kill with the steps it lost (steps done since the newest checkpoint: at most save_every), then
the final weights' largest difference from an uninterrupted run of the same steps (exact resume: ~0). The
learning rate is held constant after warmup (min_lr = lr), so a run's steps do not depend on max_steps: the
soak ends its last life with Ctrl-C at step K and the reference trains straight to K. Not part of the test
suite (tests/test_reliability.py kills 20 times per backend in ~3 minutes).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyllama.core.checkpoint import list_checkpoints, read_trainer_state  # noqa: E402
from tinyllama.core.model_files import load_weights  # noqa: E402

LR = "3e-3"  # configs/smoke.yaml's lr, also used as min_lr: no decay, so max_steps changes nothing


def command(backend: str, run: Path, cache: Path, steps: int, save_every: int) -> list[str]:
    script = "train_mlx.py" if backend == "mlx" else "train_cuda.py"
    device = ["--hardware.accelerator", "cpu"] if backend == "torch" else []
    return [sys.executable, str(ROOT / script), "--config", str(ROOT / "configs/smoke.yaml"), *device,
            "--data.cache_dir", str(cache), "--output.dir", str(run / "ckpt"), "--output.logs", str(run / "logs"),
            "--output.run_name", "soak", "--training.max_steps", str(steps), "--training.save_every", str(save_every),
            "--training.eval_every", "0", "--training.log_every", "1", "--training.lr", LR, "--training.min_lr", LR,
            "--resume", "auto"]  # fmt: skip


def logged_step(run: Path) -> int:
    metrics = run / "logs/soak/metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return max((json.loads(line)["step"] for line in lines), default=0)


def saved_step(run: Path) -> int:
    return max((read_trainer_state(p).get("step", 0) for p in list_checkpoints(run / "ckpt")), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("torch", "mlx"), default="torch")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=30.0, help="mean seconds between kills")
    parser.add_argument("--save-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    cache = root / "cache"

    endless = 10_000_000  # the killed run never reaches it: its last life ends with Ctrl-C
    every = f"a kill every ~{args.every:.0f} s for {args.minutes} min"
    print(f"soak: {args.backend}, save_every {args.save_every}, {every}")
    run = root / "killed"
    deadline, kills, lost = time.time() + args.minutes * 60, 0, []
    while True:
        proc = subprocess.Popen(command(args.backend, run, cache, endless, args.save_every),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        if time.time() >= deadline:  # the last life: once it trains again, stop it cleanly (it saves its step)
            start = logged_step(run)
            while logged_step(run) <= start and proc.poll() is None:
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=300)
            if proc.returncode:
                raise SystemExit(f"the last life failed (exit {proc.returncode}): {err[-2000:]}")
            break
        try:
            proc.wait(timeout=rng.uniform(0.5, 1.5) * args.every)
            raise SystemExit(f"a life ended by itself (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kills += 1
        lost.append(logged_step(run) - saved_step(run))
        print(f"kill {kills}: at step {logged_step(run)}, newest checkpoint {saved_step(run)}, lost {lost[-1]}")
    newest = max(list_checkpoints(run / "ckpt"), key=lambda p: read_trainer_state(p)["step"])
    total = read_trainer_state(newest)["step"]
    straight = root / "straight"
    subprocess.run(command(args.backend, straight, cache, total, 0), check=True, capture_output=True)
    reference = straight / "ckpt/final.ckpt"
    a, b = load_weights(reference), load_weights(newest)
    diff = max(float(np.abs(a[k].astype(np.float32) - b[k].astype(np.float32)).max()) for k in a)
    lost_text = f"max {max(lost, default=0)}, mean {np.mean(lost or [0]):.1f} (save_every {args.save_every})"
    print(f"{total} steps; {kills} kills; steps lost per kill: {lost_text}")
    print(f"final weights, max |difference| from an uninterrupted run of the same steps: {diff:.3g}")
    print(f"runs kept in {root}")


if __name__ == "__main__":
    main()
