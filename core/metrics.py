"""What a run shows its user: one log-line format, metrics.jsonl, loss.png, TensorBoard when installed.

Both trainers use this, so their output is identical line for line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tinyllama.core.cli import human_bytes, human_count, human_duration


def format_train_line(
    step: int, total: int, loss: float, lr: float, tok_per_s: float, mfu: float | None, mem_bytes: float, eta_s: float
) -> str:
    """`step 120/2000 | loss 3.412 | lr 2.9e-04 | 41.3k tok/s | mfu 38% | mem 1.2 GB | eta 4m10s`"""
    parts = [f"step {step}/{total}", f"loss {loss:.3f}", f"lr {lr:.1e}", f"{human_count(tok_per_s)} tok/s"]
    if mfu is not None:
        parts.append(f"mfu {100 * mfu:.0f}%")
    if mem_bytes:
        parts.append(f"mem {human_bytes(mem_bytes)}")
    parts.append(f"eta {human_duration(eta_s)}")
    return " | ".join(parts)


def format_val_line(step: int, loss: float) -> str:
    return f"step {step} | val loss {loss:.3f} | val ppl {perplexity(loss):.1f}"


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


class MetricsLog:
    """metrics.jsonl (one JSON object per line) + loss.png + optional TensorBoard, under logs/<run>/.

    Only rank 0 creates one. On resume the existing file is kept and records past the resume step
    are dropped, so the file always describes one consistent run."""

    def __init__(self, directory: str | Path, resume_step: int = 0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        if self.path.is_file() and resume_step > 0:
            for line in self.path.read_text().splitlines():
                record = json.loads(line)
                if record.get("step", 0) <= resume_step:
                    self.records.append(record)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        self.tensorboard = _tensorboard_writer(self.directory / "tensorboard")

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{record['split']}/{key}", value, step=record["step"])
            self.tensorboard.flush()

    def train(
        self,
        step: int,
        total: int,
        loss: float,
        lr: float,
        tokens: int,
        tok_per_s: float,
        mfu: float | None,
        mem_bytes: float,
        grad_norm: float,
        elapsed: float,
        eta_s: float,
    ) -> str:
        """Record a train step; returns the log line to print."""
        self.log(
            {
                "step": step,
                "split": "train",
                "loss": loss,
                "lr": lr,
                "tokens": tokens,
                "tok_per_s": tok_per_s,
                "mfu": mfu,
                "mem_gb": mem_bytes / 1e9,
                "grad_norm": grad_norm,
                "time": elapsed,
            }
        )
        return format_train_line(step, total, loss, lr, tok_per_s, mfu, mem_bytes, eta_s)

    def val(self, step: int, loss: float, tokens: int, sample: str) -> str:
        """Record an evaluation and redraw loss.png; returns the lines to print."""
        self.log({"step": step, "split": "val", "loss": loss, "ppl": perplexity(loss), "tokens": tokens})
        self.plot()
        return format_val_line(step, loss) + "\nsample: " + sample.replace("\n", " ")

    def plot(self) -> Path:
        """Train and val loss against tokens seen, as loss.png."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for split, style in (("train", "-"), ("val", "o-")):
            points = [(r["tokens"], r["loss"]) for r in self.records if r["split"] == split and "tokens" in r]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=split, markersize=4, linewidth=1.2)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("loss")
        ax.set_title(self.directory.name)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = self.directory / "loss.png"
        fig.savefig(out)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard_writer(directory: Path):
    try:
        from tensorboard.summary import Writer
    except ImportError:
        return None
    return Writer(str(directory))
