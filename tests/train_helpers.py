"""Running the trainers on configs/smoke.yaml in tests: one shared data cache, per-test output dirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.checkpoint import load_weights

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def smoke_argv(run_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", SMOKE,
        "--data.cache_dir", str(cache_dir),
        "--output.dir", str(run_dir / "ckpt"),
        "--output.logs", str(run_dir / "logs"),
        "--output.run_name", "smoke",
        "--training.log_every", "1",
        *extra,
    ]  # fmt: skip


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss, from the run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "logs" / "smoke" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = load_weights(a), load_weights(b)
    return max(float(np.abs(wa[k].astype(np.float32) - wb[k].astype(np.float32)).max()) for k in wa)
