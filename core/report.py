"""output.report_to: the metrics.jsonl records mirrored to TensorBoard or Weights & Biases (rank 0 only).

Framework-free (no torch, no mlx); tensorboard and wandb are imported only when a run asks for them.
`check` runs before the run writes anything, so a missing package is one line at start-up.

- tensorboard: event files in logs/<run_name>/tensorboard/, one per start of a run, written with tensorboard's
  own record writer and protos (TensorFlow is never imported): each numeric field of each record as the scalar
  `<split>/<key>` at its step (train/loss, train/lr, train/grad_norm, train/tok_per_s, val/loss, ...), and the
  run config as the text `config` (YAML). Each start writes a SessionLog START at its first step, so a resume
  from an earlier checkpoint hides the earlier file's points past it, as metrics.jsonl drops them.
- wandb: wandb.init(project=$WANDB_PROJECT or tiny-llama, name=run_name, config, dir=logs/<run_name>);
  WANDB_MODE (offline, disabled) is wandb's own. A resume continues the same W&B run (its id is kept in
  logs/<run_name>/wandb-run-id), or starts a new one when it went back past logged steps (W&B cannot
  rewrite history).
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Protocol

import yaml

from tinyllama.core.cli import UserError, install_extra
from tinyllama.core.config import Config

_files = itertools.count()  # event file names stay unique for several runs in one process (tests)


class Reporter(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def check(report_to: str) -> None:
    """One line naming the fix when the package `report_to` needs is missing; before any output is written."""
    if report_to == "none":
        return
    try:
        if report_to == "tensorboard":
            import tensorboard  # noqa: F401  (the package itself first: a None in sys.modules stops here)
            from tensorboard.compat.proto import event_pb2  # noqa: F401
            from tensorboard.summary.writer import record_writer  # noqa: F401
        else:
            import wandb  # noqa: F401
    except ImportError:
        raise UserError(
            f"output.report_to {report_to} needs the {report_to} package: {install_extra('logging')} in the clone "
            f"(or pip install {report_to}), or set --output.report_to none"
        ) from None


def open_reporter(cfg: Config, directory: Path, start_step: int, rewound: bool) -> Reporter | None:
    """The reporter for cfg.output.report_to (None for none), logging into `directory` (logs/<run_name>).
    `rewound`: this start dropped records past `start_step` (a resume from an earlier checkpoint)."""
    if cfg.output.report_to == "tensorboard":
        return TensorBoard(directory / "tensorboard", config_text(cfg), start_step)
    if cfg.output.report_to == "wandb":
        return Wandb(cfg, directory, start_step, rewound)
    return None


def config_text(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """`<split>/<key>` -> value for every numeric field of a metrics.jsonl record but its step."""
    split = record.get("split", "train")
    return {
        f"{split}/{key}": float(value)
        for key, value in record.items()
        if key not in ("step", "split") and isinstance(value, int | float) and not isinstance(value, bool)
    }


class TensorBoard:
    """A TensorBoard event file, flushed after every record (a killed run loses nothing it logged)."""

    def __init__(self, directory: Path, config: str, start_step: int):
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.text.metadata import create_summary_metadata
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.event_pb2, self.summary_pb2 = event_pb2, summary_pb2
        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_files)}"
        self.path = directory / name
        self.writer = RecordWriter(open(self.path, "wb"))  # closed by close()
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._write(event_pb2.Event(wall_time=time.time(), step=start_step + 1, session_log=start))
        text = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[f"```yaml\n{config}```".encode()],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        )  # fmt: skip
        value = summary_pb2.Summary.Value(tag="config", tensor=text, metadata=create_summary_metadata(None, None))
        self._write(event_pb2.Event(wall_time=time.time(), step=start_step, summary=summary_pb2.Summary(value=[value])))

    def _write(self, event) -> None:
        self.writer.write(event.SerializeToString())
        self.writer.flush()

    def log(self, record: dict[str, Any]) -> None:
        values = [self.summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars(record).items()]
        summary = self.summary_pb2.Summary(value=values)
        self._write(self.event_pb2.Event(wall_time=time.time(), step=int(record["step"]), summary=summary))

    def close(self) -> None:
        self.writer.close()


class Wandb:
    """A W&B run: wandb.log(record's scalars, step=step); finished by close()."""

    def __init__(self, cfg: Config, directory: Path, start_step: int, rewound: bool):
        import wandb

        id_file = directory / "wandb-run-id"
        run_id = id_file.read_text().strip() if start_step and not rewound and id_file.is_file() else ""
        run_id = run_id or secrets.token_hex(4)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "tiny-llama"), name=cfg.output.run_name, id=run_id,
                resume="allow", config=cfg.to_dict(), dir=str(directory),
            )  # fmt: skip
        except Exception as exc:  # not logged in, no network, ...: wandb's own message, on one line
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(
                f"output.report_to wandb: wandb.init failed: {message} (run `wandb login`, or set "
                f"WANDB_MODE=offline to log locally)"
            ) from None
        id_file.write_text(run_id + "\n")

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()
