"""output.report_to (TensorBoard, W&B), the progress output in a pipe, loss.png and eval.png."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, SMOKE, smoke_argv

from tinyllama import evaluate_checkpoints, train_cuda
from tinyllama.core.cli import run_cli
from tinyllama.core.config import load_config, parse_overrides
from tinyllama.core.metrics import ema, loss_figure

SHORT = ("--hardware.accelerator", "cpu", "--training.max_steps", "10", "--training.eval_every", "5",
         "--training.save_every", "5", "--training.keep_last", "3")  # fmt: skip


def train(tmp: Path, cache: Path, *extra: str) -> Path:
    """A 10-step smoke run (train_cuda.py in this process); returns logs/smoke."""
    train_cuda.main(smoke_argv(tmp, cache, *SHORT, *extra))
    return tmp / "logs" / "smoke"


def records(logs: Path) -> list[dict]:
    return [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]


def prepared(cache: Path) -> None:
    """The smoke data prepared in this process, so a subprocess's output is the trainer's alone."""
    from tinyllama.data.prepare import prepare_data

    prepare_data(load_config(SMOKE, parse_overrides(["--data.cache_dir", str(cache)])).data, progress=False)


# ------------------------------------------------------------------------------------- TensorBoard


def read_events(directory: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def assert_events_match_metrics(events, logs: Path) -> None:
    expected: dict[str, dict[int, float]] = {}
    for r in records(logs):
        for key, value in r.items():
            if key not in ("step", "split") and isinstance(value, int | float):
                expected.setdefault(f"{r['split']}/{key}", {})[r["step"]] = value
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tok_per_s", "val/loss", "val/ppl"} <= set(expected)
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, by_step in expected.items():
        got = {e.step: e.value for e in events.Scalars(tag)}
        assert sorted(got) == sorted(by_step), tag
        for step, value in by_step.items():  # stored as float32
            assert got[step] == pytest.approx(value, rel=1e-6), (tag, step)


@pytest.mark.slow
def test_tensorboard_holds_the_metrics_and_config_and_a_resume_replaces_later_points(
    tmp_path, data_cache, one_torch_thread
):
    logs = train(tmp_path, data_cache, "--output.report_to", "tensorboard")
    events = read_events(logs / "tensorboard")
    assert_events_match_metrics(events, logs)
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 11))
    assert [e.step for e in events.Scalars("val/loss")] == [5, 10]
    config = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "run_name: smoke" in config and "report_to: tensorboard" in config and "max_steps: 10" in config
    first_time = {e.step: e.value for e in events.Scalars("train/time")}

    # resume from step 5 in the same run: metrics.jsonl drops steps 6-10 and so does TensorBoard (a new file)
    train(
        tmp_path, data_cache, "--output.report_to", "tensorboard", "--resume", str(tmp_path / "ckpt/step-000005.ckpt")
    )
    assert len(list((logs / "tensorboard").glob("events.out.tfevents.*"))) == 2
    events = read_events(logs / "tensorboard")
    assert_events_match_metrics(events, logs)  # steps 1-5 of the first start, 6-10 of the second
    resumed = {e.step: e.value for e in events.Scalars("train/time")}
    assert all(resumed[s] == first_time[s] for s in range(1, 6))
    assert any(resumed[s] != first_time[s] for s in range(6, 11))

    png = (logs / "loss.png").read_bytes()  # the plot of the whole run, redrawn at the end
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.pyplot as plt

    assert plt.imread(logs / "loss.png").shape[2] in (3, 4)


def test_report_module_imports_no_framework_and_writes_without_tensorflow(tmp_path):
    code = (
        "import sys; from pathlib import Path; import tinyllama.core.loop\n"
        "from tinyllama.core.config import Config; from tinyllama.core.report import open_reporter\n"
        "cfg = Config(); cfg.output.report_to = 'tensorboard'\n"
        f"r = open_reporter(cfg, Path({str(tmp_path)!r}), 0, False)\n"
        "r.log({'step': 1, 'split': 'train', 'loss': 2.5, 'mfu': None}); r.close()\n"
        "print(sorted(m for m in ('torch', 'mlx', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]"]
    assert [e.value for e in read_events(tmp_path / "tensorboard").Scalars("train/loss")] == [2.5]


# ------------------------------------------------------------------------------------- missing packages


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
def test_missing_package_is_one_line_before_any_output(tmp_path, data_cache, capsys, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: `import <package>` raises ImportError
    argv = smoke_argv(tmp_path, data_cache, *SHORT, "--output.report_to", package)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train_cuda.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f'error: output.report_to {package} needs the {package} package: pip install -e ".[logging]" in the clone '
        f"(or pip install {package}), or set --output.report_to none"
    ]
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
def test_the_install_hint_names_an_extra_that_holds_the_package_as_the_docs_spell_it(package, monkeypatch):
    """The hint's command installs an extra pyproject.toml has, holding the missing package, spelled as the docs
    spell it (it said pip install 'tiny-llama[logging]', a name no index serves this project under)."""
    import re
    import tomllib

    from tinyllama.core.cli import UserError
    from tinyllama.core.report import check

    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(UserError) as error:
        check(package)
    command = re.search(r"pip install -e \"\.\[(\w+)\]\"", str(error.value))
    assert command, str(error.value)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.match(rf"{package}\b", requirement) for requirement in extras[command.group(1)])
    docs = (ROOT / "docs" / "training.md").read_text() + (ROOT / "docs" / "install.md").read_text()
    assert command.group(0) in docs and f"`{command.group(1)}`" in (ROOT / "docs" / "install.md").read_text()


# ------------------------------------------------------------------------------------- wandb


class FakeWandb(types.ModuleType):
    """Records what the reporter asks of wandb."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished += 1


def test_wandb_reporter_logs_records_and_keeps_its_run_across_resumes(tmp_path, monkeypatch):
    from tinyllama.core.config import Config
    from tinyllama.core.report import open_reporter

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    cfg = Config()
    cfg.output.report_to, cfg.output.run_name = "wandb", "smoke"
    reporter = open_reporter(cfg, tmp_path, 0, False)
    reporter.log({"step": 3, "split": "train", "loss": 2.0, "lr": 1e-3, "mfu": None, "tokens": 96})
    reporter.log({"step": 3, "split": "val", "loss": 2.5, "ppl": 12.2})
    reporter.close()
    init = fake.inits[0]
    assert init["project"] == "tiny-llama" and init["name"] == "smoke" and init["dir"] == str(tmp_path)
    assert init["config"] == cfg.to_dict() and init["resume"] == "allow"
    assert fake.logged == [
        (3, {"train/loss": 2.0, "train/lr": 1e-3, "train/tokens": 96.0}),
        (3, {"val/loss": 2.5, "val/ppl": 12.2}),
    ]
    assert fake.finished == 1
    open_reporter(cfg, tmp_path, 3, rewound=False)  # a resume at the end: the same W&B run
    open_reporter(cfg, tmp_path, 2, rewound=True)  # back past logged steps: a new one (W&B keeps history)
    open_reporter(cfg, tmp_path, 0, rewound=False)  # a fresh start (overwrite): a new one
    ids = [i["id"] for i in fake.inits]
    assert ids[1] == ids[0] and len({ids[0], ids[2], ids[3]}) == 3


@pytest.mark.slow
def test_wandb_offline_run_is_written_beside_the_metrics(tmp_path, data_cache, monkeypatch, one_torch_thread):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logs = train(tmp_path, data_cache, "--output.report_to", "wandb")
    run_id = (logs / "wandb-run-id").read_text().strip()
    [history] = (logs / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data = history.read_bytes()  # wandb's binary log: keys and JSON values are stored as plain bytes
    for key in (b"train/loss", b"train/lr", b"train/grad_norm", b"val/loss", b"tiny-llama", b"smoke"):
        assert key in data, key
    assert len(records(logs)) == 12  # metrics.jsonl as always


# ------------------------------------------------------------------------------------- progress output


@pytest.mark.slow
def test_piped_output_is_one_line_per_log_interval_no_redraws(tmp_path, data_cache):
    prepared(data_cache)
    argv = smoke_argv(tmp_path, data_cache, *SHORT, "--training.log_every", "2")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "train_cuda.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stdout + out.stderr and "step/s" not in out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(" | ")[0] for line in lines if " | loss " in line] == [f"step {s}/10" for s in (2, 4, 6, 8, 10)]
    assert len(lines) <= 13 and out.stderr == ""  # start, mfu reference, 5 log lines, 2 x (val, sample), done, try


@pytest.mark.slow
def test_terminal_still_gets_the_progress_bar(tmp_path, data_cache):
    import fcntl
    import struct
    import termios

    prepared(data_cache)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 0 columns: tqdm draws nothing
    argv = smoke_argv(tmp_path, data_cache, *SHORT, "--training.log_every", "2")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "train_cuda.py", *argv], cwd=ROOT, env=env, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks = []
    while True:  # read while it runs: a full terminal buffer would block the trainer
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the trainer exited and its output is drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.wait(timeout=300) == 0, text[-2000:]
    assert "step/s" in text and text.count("%|") >= 2 and "step 10/10 | loss" in text


@pytest.mark.slow
def test_no_progress_bar_in_output_redirected_to_files(tmp_path):
    """Reading a model of 100+ tensors drew a `read model.safetensors` bar (tqdm, never disabled) into stderr
    redirected to a file; every bar of this project is drawn on a terminal only (core.cli.progress)."""
    import dataclasses

    from helpers import TINY_MODELS, make_checkpoint

    cfg = dataclasses.replace(TINY_MODELS["gqa8x2-tied"], vocab_size=320, n_layers=12)  # 12 * 9 + 2 tensors
    ckpt = make_checkpoint(tmp_path, cfg)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    argv = [sys.executable, "infer.py", "--ckpt", str(ckpt), "-p", "The", "--max-new-tokens", "2", "--temp", "0"]
    with open(out, "w") as o, open(err, "w") as e:
        assert subprocess.run(argv, cwd=ROOT, stdout=o, stderr=e, timeout=300).returncode == 0, err.read_text()
    assert "read model.safetensors" not in err.read_text()
    assert "\r" not in out.read_text() + err.read_text() and "generated 2 tokens" in err.read_text()


def test_a_bar_is_drawn_on_a_terminal_only(monkeypatch):
    from tinyllama.core.cli import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        for _ in progress(range(3), desc="read x", mininterval=0):
            pass
        assert ("read x" in stream.getvalue()) is drawn
        assert progress(range(3), shown=False).disable


# ------------------------------------------------------------------------------------- plots


def fake_records(steps: int = 60) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for s in range(1, steps + 1):
        loss = 6 * np.exp(-s / 20) + 3 + 0.3 * rng.standard_normal()
        out.append({"step": s, "split": "train", "loss": loss, "lr": 3e-4 * min(1, s / 10), "tokens": s * 32768})
        if s % 20 == 0:
            out.append({"step": s, "split": "val", "loss": loss + 0.1, "ppl": 1.0, "tokens": s * 32768})
    return out


def test_loss_figure_has_smoothed_loss_val_points_lr_panel_and_units():
    import matplotlib.pyplot as plt

    recs = fake_records()
    train = [r for r in recs if r["split"] == "train"]
    fig = loss_figure(recs, "my-run")
    ax, ax_lr = fig.axes
    assert ax.get_title() == "my-run" and ax.get_ylabel() == "loss (nats/token)"
    assert ax_lr.get_xlabel() == "tokens seen (M)" and ax_lr.get_ylabel() == "learning rate"
    raw, smooth, val = ax.get_lines()
    assert np.allclose(raw.get_xdata(), [r["tokens"] / 1e6 for r in train])
    assert np.allclose(raw.get_ydata(), [r["loss"] for r in train]) and raw.get_alpha() < 0.5
    assert np.allclose(smooth.get_ydata(), ema([r["loss"] for r in train]))
    assert np.std(np.diff(smooth.get_ydata())) < np.std(np.diff(raw.get_ydata()))  # smoother than the raw loss
    assert np.allclose(val.get_xdata(), [0.65536, 1.31072, 1.96608]) and val.get_marker() == "o"
    [lr] = ax_lr.get_lines()
    assert np.allclose(lr.get_ydata(), [r["lr"] for r in train])
    plt.close(fig)
    assert ema([2.0, 2.0, 2.0], beta=0.9) == pytest.approx([2.0, 2.0, 2.0])  # bias-corrected: no ramp from 0


def test_eval_plot_uses_tokens_and_labels_its_axes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    case = {"mean_logprob": -2.0}
    recs = [
        {"step": s, "tokens": s * 2048, "val_loss": 5.0 - s / 100, "val_bpb": (5.0 - s / 100) / 3, "top1": 0.5,
         "topk": 0.75, "cases": [case]}
        for s in (100, 200, 300)
    ]  # fmt: skip
    evaluate_checkpoints.plot(recs, tmp_path / "eval.png", 5)
    assert (tmp_path / "eval.png").read_bytes().startswith(b"\x89PNG")
    axes = figures[0].axes
    assert [a.get_xlabel() for a in axes] == ["tokens seen (k)"] * 3
    assert [a.get_ylabel() for a in axes] == ["fraction of cases", "log-prob (nats/token)", "loss (nats/token)"]
    assert np.allclose(axes[2].get_lines()[0].get_xdata(), [204.8, 409.6, 614.4])
    (bits,) = axes[2].child_axes  # bits per byte: the loss's own scale times bpb / loss
    assert bits.get_ylabel() == "bits per byte" and np.isclose(bits._functions[0](3.0), 1.0)
    for r in recs:
        r["tokens"] = None  # a checkpoint without trainer_state.json's tokens_seen: the step instead
    evaluate_checkpoints.plot(recs, tmp_path / "eval.png", 5)
    assert figures[1].axes[0].get_xlabel() == "step"
    for fig in figures:
        close(fig)
