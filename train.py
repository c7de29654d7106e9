"""Train with the backend that `hardware.accelerator` picks: the seed's command.

    python train.py --config config.yaml [--resume auto] [--section.key value ...]

auto: MLX on Apple Silicon (train_mlx.py); otherwise PyTorch (train_cuda.py), which uses a CUDA GPU
when one is visible and else the CPU, where it is several times faster than MLX's CPU backend.
mlx forces train_mlx.py; cuda, mps and cpu force train_cuda.py on that device.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from core.backend import pick
from core.cli import run_cli
from core.config import load_config
from core.training import parse_train_args

ROOT = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    args, overrides = parse_train_args(__doc__, argv)
    cfg = load_config(args.config, overrides)  # fail here, once, on a bad config
    backend, _ = pick(cfg.hardware.accelerator)
    trainer = "train_mlx.py" if backend == "mlx" else "train_cuda.py"
    print(f"hardware.accelerator {cfg.hardware.accelerator} -> {trainer}", file=sys.stderr)
    os.execv(sys.executable, [sys.executable, str(ROOT / trainer), *argv])


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
