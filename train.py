"""Train with the backend that `hardware.accelerator` picks (python train.py --config config.yaml).

    python train.py --config config.yaml [--resume auto] [--section.key value ...]
    python train.py --config config.yaml --hardware.devices 2     # data parallel over 2 local processes

auto: MLX on Apple Silicon (train_mlx.py); otherwise PyTorch (train_cuda.py), which uses a CUDA GPU
when one is visible and else the CPU, where it is several times faster than MLX's CPU backend.
mlx forces train_mlx.py; cuda, mps and cpu force train_cuda.py on that device.
hardware.devices N > 1 starts N processes on this machine with the framework's own launcher
(torchrun, or mlx.launch with the ring backend); 0 or 1 runs one.
"""

from __future__ import annotations

if __name__ == "__main__":
    from tinyllama.core.cli import exit_on_interrupt

    exit_on_interrupt()

import os
import sys
from pathlib import Path

from tinyllama.core.backend import pick
from tinyllama.core.cli import UserError, exit_on_interrupt, run_cli
from tinyllama.core.config import find_config, load_config
from tinyllama.core.training import parse_train_args

ROOT = Path(__file__).resolve().parent


def command(backend: str, devices: int, argv: list[str]) -> list[str]:
    """The command line that runs the chosen trainer on `devices` local processes."""
    trainer = str(ROOT / ("train_mlx.py" if backend == "mlx" else "train_cuda.py"))
    launched = "WORLD_SIZE" in os.environ or "MLX_RANK" in os.environ  # already under a launcher
    if devices <= 1 or launched:
        return [sys.executable, trainer, *argv]
    if backend == "torch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
                trainer, *argv]  # fmt: skip
    launcher = Path(sys.executable).parent / "mlx.launch"
    if not launcher.is_file():
        raise UserError(f"hardware.devices {devices} needs mlx.launch beside {sys.executable}; pip install mlx")
    return [str(launcher), "-n", str(devices), "--backend", "ring", "--python", sys.executable, trainer, *argv]


def with_config(argv: list[str], config: Path) -> list[str]:
    """argv with --config naming `config`: the trainer reads the file found here and does not look for it (and
    say so) again."""
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--config" and rest:
            rest.pop(0)
        elif not arg.startswith("--config="):
            out.append(arg)
    return ["--config", str(config), *out]


def main(argv: list[str]) -> None:
    args, overrides = parse_train_args(__doc__, argv, "train.py")
    config = find_config(args.config)  # a bundled config's name: said once, here
    cfg = load_config(config, overrides)  # fail here, once, on a bad config
    backend, _ = pick(cfg.hardware.accelerator)
    cmd = command(backend, cfg.hardware.devices, with_config(argv, config) if config != Path(args.config) else argv)
    print(f"hardware.accelerator {cfg.hardware.accelerator} -> {' '.join(cmd[1:3])}", file=sys.stderr)
    os.execv(cmd[0], cmd)


def cli() -> None:
    """The `tinyllama-train` command."""
    exit_on_interrupt()
    run_cli(lambda: main(sys.argv[1:]))


if __name__ == "__main__":
    cli()
