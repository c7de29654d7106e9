"""training.time_budget fixes max_steps from the first steps' timing and ends the run within the budget; the
trainers report epochs, and a val line says so when val bpb keeps rising."""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml
from helpers import smoke_argv, train_losses

import tinyllama.core.budget as budget_module
from tinyllama import train_cuda
from tinyllama.core.budget import TimeBudget
from tinyllama.core.cli import UserError
from tinyllama.core.config import ConfigError, load_config
from tinyllama.core.metrics import MetricsLog


def test_max_steps_fits_the_steps_and_every_evaluation_into_the_budget(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: clock[0])
    budget = TimeBudget(60.0, first_step=0, warmup_steps=10, eval_every=20)
    budget.start()
    clock[0] += 5.0  # the first step compiles: not timed
    assert budget.max_steps(1, lambda: 0.0) is None
    for done in range(2, budget.calibrated_at):
        clock[0] += 0.5
        assert budget.max_steps(done, lambda: 0.0) is None
    clock[0] += 0.5

    def evaluation():
        clock[0] += 2.0
        return 2.0

    total, line = budget.max_steps(budget.calibrated_at, evaluation)
    done = budget.calibrated_at
    assert done == 10  # the warm-up's steps timed but the first (compiling) and the last
    # 60 s - 5 s compile - 9 x 0.5 s - 2 s timing eval = 48.5 s left for steps and their evaluations
    evals = total // 20 - done // 20 + 1
    assert (total - done) * 0.5 + evals * 2.0 <= 48.5 < (total - done + 1) * 0.5 + evals * 2.0 + 2.0
    assert f"-> max_steps {total}" in line and "0.500 s a step" in line


def test_a_budget_too_short_for_the_warm_up_is_one_line(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: clock[0])
    budget = TimeBudget(6.0, first_step=0, warmup_steps=50, eval_every=0)
    budget.start()
    for done in range(1, budget.calibrated_at + 1):
        clock[0] += 1.0
        result = None
        if done == budget.calibrated_at:
            with pytest.raises(UserError, match="leaves .* steps here .*not past the 50 warm-up steps; give it at"):
                budget.max_steps(done, lambda: 0.5)
        else:
            result = budget.max_steps(done, lambda: 0.5)
        assert result is None


def test_config_refuses_what_a_budget_cannot_time(tmp_path):
    smoke = "configs/smoke.yaml"
    for overrides, message in (
        ({"training.time_budget": "-1"}, "time_budget must be >= 0"),
        ({"training.time_budget": "5", "training.max_tokens": "1000"}, "both set the length"),
        ({"training.time_budget": "5", "training.warmup_steps": "1"}, "warmup_steps >= 2"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(smoke, overrides)


def test_the_val_line_says_when_val_bpb_keeps_rising(tmp_path):
    log = MetricsLog(tmp_path, 0)
    log.train(1, 10, 3.0, 1e-3, 100, 1.0, None, 0, 1.0, 1.0, 1.0, epoch=2.5)
    lines = [log.val(step, 3.0, 100, "x", bpb=bpb) for step, bpb in ((2, 1.30), (4, 1.31), (6, 1.35), (8, 1.2))]
    assert "rose" not in lines[0] + lines[1] + lines[3]
    assert "val bpb rose 2 evaluations in a row at epoch 2.5: overfitting?" in lines[2]
    records = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["epoch"] == 2.5 and "epoch 3.00" in log.train(9, 10, 3.0, 1e-3, 100, 1.0, None, 0, 1, 1, 1, 3.0)


@pytest.mark.slow
def test_a_budgeted_run_ends_in_time_and_resumes_with_its_fixed_max_steps(
    tmp_path, data_cache, capsys, one_torch_thread
):
    # one torch thread (two beside another worker's spin against each other: steps 30x slower), 9 timed warm-up
    # steps, a save every 10: a fixed max_steps is past the warm-up, so there is a step to resume from
    args = ("--training.time_budget", "0.25", "--training.max_steps", "1000000", "--training.warmup_steps", "10",
            "--training.eval_every", "40", "--training.save_every", "10", "--training.keep_last", "5",
            "--hardware.accelerator", "cpu")  # fmt: skip
    began = time.perf_counter()
    train_cuda.main(smoke_argv(tmp_path, data_cache, *args))
    took = time.perf_counter() - began
    out = capsys.readouterr().out
    fixed = int(re.search(r"time_budget 0.25 min: .* -> max_steps (\d+)", out).group(1))
    steps = sorted(train_losses(tmp_path))
    assert steps[-1] == fixed > 10
    saved = yaml.safe_load((tmp_path / "ckpt/final.ckpt/train_config.yaml").read_text())["training"]
    assert saved["max_steps"] == fixed and saved["time_budget"] == 0
    records = [json.loads(line) for line in (tmp_path / "logs/smoke/metrics.jsonl").read_text().splitlines()]
    # The budget counts from the first step (set-up and data preparation come before it) and promises an end in
    # time on a machine as fast as it measured: a busy 2-core box that slows down afterwards stretches it as much.
    planned_step_s = float(re.search(r"time_budget 0.25 min: ([\d.]+) s a step", out).group(1))
    trained_s = max(r["time"] for r in records if r["split"] == "train")
    slowdown = max(1.0, trained_s / fixed / planned_step_s)
    assert trained_s < 15 * 1.3 * slowdown, (trained_s, slowdown)
    assert took < 15 * 1.3 * slowdown + 30  # and nothing after the last step (final eval, save) takes long
    assert any(r["split"] == "val" and "bpb" in r for r in records)
    assert all("epoch" in r for r in records if r["split"] == "train")
    assert "val bpb" in out
    halfway = sorted((tmp_path / "ckpt").glob("step-*.ckpt"))[0]
    resumed = tmp_path / "resumed"
    train_cuda.main(smoke_argv(resumed, data_cache, "--resume", str(halfway), "--hardware.accelerator", "cpu"))
    assert max(train_losses(resumed)) == fixed  # the fixed max_steps, nothing timed again
    with pytest.raises(UserError, match="time_budget fixes max_steps when a run starts"):
        train_cuda.main(smoke_argv(tmp_path / "again", data_cache, "--resume", str(halfway),
                                   "--training.time_budget", "1", "--hardware.accelerator", "cpu"))  # fmt: skip
