"""What a run shows its user: one log-line format, metrics.jsonl, loss.png (output.report_to: core/report.py).

Both trainers use this, so their output is identical line for line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tinyllama.core.cli import UserError, human_bytes, human_count, human_duration
from tinyllama.core.fs import atomic_path, write_text


def format_train_line(
    step: int,
    total: int,
    loss: float,
    lr: float,
    tok_per_s: float,
    mfu: float | None,
    mem_bytes: float,
    eta_s: float,
    epoch: float | None = None,
) -> str:
    """`step 120/2000 | loss 3.412 | lr 2.9e-04 | epoch 1.32 | 41.3k tok/s | mfu 38% | mem 1.2 GB | eta 4m10s`"""
    parts = [f"step {step}/{total}", f"loss {loss:.3f}", f"lr {lr:.1e}"]
    if epoch is not None:
        parts.append(f"epoch {epoch:.2f}")
    parts.append(f"{human_count(tok_per_s)} tok/s")
    if mfu is not None:
        parts.append(f"mfu {100 * mfu:.0f}%")
    if mem_bytes:
        parts.append(f"mem {human_bytes(mem_bytes)}")
    parts.append(f"eta {human_duration(eta_s)}")
    return " | ".join(parts)


def format_val_line(step: int, loss: float, bpb: float | None = None) -> str:
    shown = f" | val bpb {bpb:.3f}" if bpb is not None else ""
    return f"step {step} | val loss {loss:.3f}{shown} | val ppl {perplexity(loss):.1f}"


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def bits_per_byte(mean_nats: float, targets: int, nbytes: int) -> float:
    """Bits per UTF-8 byte of text: the targets' summed nats (mean x count) / (ln 2 x the bytes they decode to).
    Unlike a loss per token it compares runs across tokenizers."""
    return mean_nats * targets / (math.log(2) * nbytes) if nbytes else float("nan")


RISING_EVALS = 2  # val bpb rising this many evaluations in a row is said in the val line


class MetricsLog:
    """metrics.jsonl (one JSON object per line) + loss.png under logs/<run>/, each record also handed to
    `reporter` (core/report.py: TensorBoard, W&B) when one is set.

    Only rank 0 creates one. On resume the existing file is kept and records past the resume step
    are dropped (`rewound` says whether any were), so the file always describes one consistent run; it is
    rewritten whole (core.fs.write_text), so a kill then leaves the old file or the new one."""

    reporter = None

    def __init__(self, directory: str | Path, resume_step: int = 0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        self.rewound = False
        if self.path.is_file() and resume_step > 0:
            for record in read_records(self.path):
                if record.get("step", 0) <= resume_step:
                    self.records.append(record)
                else:
                    self.rewound = True
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.reporter is not None:
            self.reporter.log(record)

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
        epoch: float | None = None,
    ) -> str:
        """Record a train step; returns the log line to print. `epoch`: passes over the training data so far."""
        self.log(
            {
                "step": step,
                "split": "train",
                "loss": loss,
                "lr": lr,
                "tokens": tokens,
                **({"epoch": epoch} if epoch is not None else {}),
                "tok_per_s": tok_per_s,
                "mfu": mfu,
                "mem_gb": mem_bytes / 1e9,
                "grad_norm": grad_norm,
                "time": elapsed,
            }
        )
        return format_train_line(step, total, loss, lr, tok_per_s, mfu, mem_bytes, eta_s, epoch)

    def val(self, step: int, loss: float, tokens: int, sample: str, bpb: float | None = None) -> str:
        """Record an evaluation (loss in nats per token, bits per byte) and redraw loss.png; returns the lines to
        print, with a warning when val bpb rose at each of the last RISING_EVALS evaluations."""
        bits = {"bpb": bpb} if bpb is not None else {}
        self.log({"step": step, "split": "val", "loss": loss, **bits, "ppl": perplexity(loss), "tokens": tokens})
        self.plot()
        line = format_val_line(step, loss, bpb)
        history = [r.get("bpb", r["loss"]) for r in self.records if r.get("split") == "val"][-RISING_EVALS - 1 :]
        if len(history) > RISING_EVALS and all(b > a for a, b in zip(history, history[1:], strict=False)):
            epoch = next((r["epoch"] for r in reversed(self.records) if "epoch" in r), None)
            when = f" at epoch {epoch:.1f}" if epoch is not None else ""
            line += f" | val {'bpb' if bpb is not None else 'loss'} rose {RISING_EVALS} evaluations in a row{when}: "
            line += "overfitting? (more data, weight_decay, a smaller model or fewer epochs)"
        return line + "\nsample: " + sample.replace("\n", " ")

    def plot(self) -> Path:
        """loss.png: the loss and learning-rate panels of loss_figure, replaced whole."""
        import matplotlib.pyplot as plt

        fig = loss_figure(self.records, self.directory.name)
        out = self.directory / "loss.png"
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return out

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl. A kill while a line is appended leaves it torn (`{"step": 3, "spl`): a
    torn last line is dropped with one note, and the run goes on. A damaged line elsewhere was not left by a
    kill: one error line naming it, before anything is written."""
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":  # the file ends with a newline
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            whole = isinstance(record, dict) and isinstance(record.get("step", 0), int)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            whole = False
        if whole:
            records.append(record)
        elif number == len(lines):
            shown = line[:40].decode("utf-8", "replace") + ("..." if len(line) > 40 else "")
            print(f"note: {path}: dropped its last line, cut short by a kill mid-write: {shown}", file=sys.stderr)
        else:
            raise UserError(
                f"{path} line {number} is not a metrics record (a JSON object with an integer 'step'); delete that "
                f"line or the file (it is the run's log: checkpoints do not need it)"
            )
    return records


def token_unit(most: float) -> tuple[float, str]:
    """(divisor, axis label) for a token count axis reaching `most`: `tokens seen (M)` etc."""
    for divisor, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if most >= divisor:
            return divisor, f"tokens seen ({unit})"
    return 1.0, "tokens seen"


def ema(values: list[float], beta: float | None = None) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing); by default over ~5% of the points."""
    if beta is None:
        beta = min(0.98, max(0.0, 1 - 20 / max(1, len(values))))
    out, avg = [], 0.0
    for i, value in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * value
        out.append(avg / (1 - beta**i))
    return out


def loss_figure(records: list[dict[str, Any]], title: str):
    """Train loss (raw, faint, and smoothed), val loss points, and below them the learning rate, against tokens
    seen: the matplotlib Figure loss.png is drawn from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") == "train" and "tokens" in r]
    val = [r for r in records if r.get("split") == "val" and "tokens" in r]
    divisor, xlabel = token_unit(max((r["tokens"] for r in train + val), default=0))
    fig, (ax, ax_lr) = plt.subplots(2, 1, sharex=True, figsize=(7, 5.4), dpi=110, gridspec_kw={"height_ratios": (3, 1)})
    if train:
        x, loss = [r["tokens"] / divisor for r in train], [r["loss"] for r in train]
        ax.plot(x, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="train")
        ax.plot(x, ema(loss), color="tab:blue", linewidth=1.6, label="train (smoothed)")
        ax_lr.plot(x, [r.get("lr", float("nan")) for r in train], color="tab:orange", linewidth=1.2)
    if val:
        x, loss = [r["tokens"] / divisor for r in val], [r["loss"] for r in val]
        ax.plot(x, loss, "o-", color="tab:red", markersize=4, linewidth=1, label="val")
    ax.set(title=title, ylabel="loss (nats/token)")
    scaled = [r for r in val if r.get("bpb") and r["loss"] > 0]
    if scaled:  # bits per byte is the val loss times a constant of the val set: a second scale on the same axis
        k = scaled[-1]["bpb"] / scaled[-1]["loss"]
        ax.secondary_yaxis("right", functions=(lambda v: v * k, lambda b: b / k)).set_ylabel("val bits per byte")
    ax_lr.set(xlabel=xlabel, ylabel="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for a in (ax, ax_lr):
        a.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    return fig
