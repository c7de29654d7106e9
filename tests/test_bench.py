"""`make bench` (bench/run_all.py) and the scaling bench (bench/scaling.py): the generated section of
docs/benchmarks.md, a failing bench reported in its row, the Mac decisions with a mocked Mac, the time budget."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import bench_module

from tinyllama.core import hardware

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


run_all = bench_module("run_all")
scaling = run_all.scaling
HEADER = {"date": "2030-01-01 00:00 UTC", "took": "1 min", "machine": "M", "load": "1 before", "versions": "V"}


def outside(doc: str) -> str:
    """The document without the generated section."""
    return doc[: doc.index(run_all.BEGIN)] + doc[doc.index(run_all.END) + len(run_all.END) :]


def assert_rest_unchanged(new: str, old: str) -> None:
    """Everything outside the generated section is `old`, byte for byte (the section replaced or inserted)."""
    if run_all.BEGIN in old:
        assert outside(new) == outside(old)
    else:
        start, end = new.index(run_all.BEGIN), new.index(run_all.END) + len(run_all.END)
        assert new[:start] + new[end + 2 :] == old


def row(name: str, figure: str) -> str:
    return f"| `{name}` | {figure} | 1 tok/s | 1 tok/s | **1.00x** | `python bench/{name}.py` |"


# --- the generated section ---


def test_section_is_inserted_before_the_first_heading_and_replaced_in_place():
    doc = "# Benchmarks\n\nintro\n\n## History\n\nold table\n"
    first = run_all.write_section(doc, run_all.render({"loss": ([row("loss", "a")], "")}, "", HEADER))
    assert first.startswith("# Benchmarks\n\nintro\n\n" + run_all.BEGIN)
    assert first.endswith(run_all.END + "\n\n## History\n\nold table\n")
    assert_rest_unchanged(first, doc)
    second = run_all.write_section(first, run_all.render({"loss": ([row("loss", "b")], "")}, "", HEADER))
    assert outside(second) == outside(first) and "| b |" in second and "| a |" not in second


def test_only_keeps_the_other_benches_rows_and_blocks():
    results = {"loss": ([row("loss", "a")], ""), "scaling": ([row("scaling", "s")], "### Scaling\n\ntable")}
    section = run_all.render(results, "", HEADER)
    again = run_all.render({"loss": ([row("loss", "b")], "")}, section, HEADER | {"date": "2031-01-01 00:00 UTC"})
    assert "| b |" in again and "| a |" not in again and row("scaling", "s") in again
    assert "<!-- make bench: scaling -->\n### Scaling\n\ntable\n<!-- make bench: scaling end -->" in again
    assert "- kept from the run of 2030-01-01 00:00 UTC on M: scaling" in again


def test_kept_rows_keep_the_date_and_machine_of_the_run_that_measured_them():
    results = {"loss": ([row("loss", "a")], ""), "scaling": ([row("scaling", "s")], "")}
    first = run_all.render(results, "", HEADER | {"machine": "Linux x86_64, Xeon, GPU: none"})
    second = run_all.render({"loss": ([row("loss", "b")], "")}, first, HEADER | {"date": "2031", "machine": "EPYC"})
    third = run_all.render(
        {"generate": ([row("generate", "g")], "")}, second, HEADER | {"date": "2032", "machine": "M1"}
    )
    assert "- kept from the run of 2031 on EPYC: loss" in third
    assert "- kept from the run of 2030-01-01 00:00 UTC on Linux x86_64, Xeon, GPU: none: scaling" in third
    assert "- machine: M1;" in third and all(f"| {x} |" in third for x in "bsg")


def test_a_failing_bench_gets_a_row_and_the_others_still_run(tmp_path, monkeypatch):
    doc = tmp_path / "benchmarks.md"
    doc.write_bytes(DOC.read_bytes())

    def fake(name, args, tmp):
        if name == "prepare":
            raise RuntimeError("tokenizer exploded")
        return [[f"{name} figure", "2 tok/s", "1 tok/s", "**2.00x**"]], ""

    monkeypatch.setattr(run_all, "run_bench", fake)
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "prepare", "--only", "loss", "--doc", str(doc)])
    run_all.main()
    text = doc.read_text()
    assert "| `prepare` | failed | RuntimeError: tokenizer exploded |" in text
    assert "| `loss` | loss figure | 2 tok/s | 1 tok/s | **2.00x** | `python bench/loss.py` |" in text
    assert_rest_unchanged(text, DOC.read_text())


def test_generate_lines_are_read():
    out = "mlx   greedy   ours    25.9 tok/s  mlx_lm         25.3 tok/s  ratio 1.02x\n"
    out += "mlx   greedy tokens identical to mlx_lm: 64 of 64\n"
    out += "torch sampled  ours    39.0 tok/s  transformers   30.2 tok/s  ratio 1.29x\n"
    rows = run_all.rows_generate(out)
    assert rows[0] == ["MLX greedy generation vs `mlx_lm` (greedy tokens identical: 64 of 64)", "25.9 tok/s",
                       "25.3 tok/s", "**1.02x**"]  # fmt: skip
    assert rows[1][0] == "torch sampled generation vs `transformers`" and rows[1][3] == "**1.29x**"
    with pytest.raises(ValueError):
        run_all.rows_generate("something else entirely")


def test_importtime_names_who_imported_a_module():
    stderr = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       10 |         10 |     transformers.utils",
        "import time:       20 |         30 |   transformers",
        "import time:        5 |         35 | tinyllama.convert.hf",
        "import time:      100 |        100 | torch._dynamo",
    ])  # fmt: skip
    rows = run_all.importtime(stderr)
    assert rows[0] == (2, 10, "transformers.utils")
    assert run_all.importer(rows, "transformers") == "yes, via tinyllama.convert.hf"
    assert run_all.importer(rows, "torch._dynamo") == "yes, at run time (a function's import)"
    assert run_all.importer(rows, "mlx_lm") == "no"


@pytest.mark.slow
def test_quick_run_writes_the_section_into_a_copy(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_bytes(DOC.read_bytes())
    cmd = [sys.executable, "bench/run_all.py", "--quick", "--only", "train_mlx", "--doc", str(doc)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)
    text, before = doc.read_text(), DOC.read_text()
    section = run_all.current_section(text)
    assert "- date: " in section and "- machine: " in section and f"{hardware.cpu_name()}" in section
    assert "- versions: Python " in section and "torch " in section and "mlx " in section
    lines = [line for line in section.splitlines() if line.startswith("| `train_mlx` |")]
    assert lines and lines[0].endswith("| `python bench/train_mlx.py --config configs/smoke.yaml --steps 1 "
                                       "--rounds 1 --batch-size 2 --seq-len 32` |")  # fmt: skip
    assert_rest_unchanged(text, before)


@pytest.mark.slow
def test_the_torch_step_bench_alternates_the_models_step_by_step_on_a_cpu(tmp_path):
    """The CPU's speed drifts within seconds, so ours and transformers' take turns of one step and the ratio
    is the median of each turn's pair; --turn lengthens the turns (a GPU's default: all steps at once)."""
    import statistics

    for turn, turns in ((0, 3), (3, 1)):
        out = tmp_path / f"turn{turn}.json"
        sizes = ["--steps", "3", "--rounds", "1", "--batch-size", "2", "--seq-len", "32"]
        cmd = [sys.executable, "bench/train_torch.py", "--config", "configs/smoke.yaml", *sizes, "--turn", str(turn)]
        cmd += ["--json", str(out)]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
        data = json.loads(out.read_text())
        assert len(data["ours_turns"]) == len(data["reference_turns"]) == turns
        pairs = [a / b for a, b in zip(data["ours_turns"], data["reference_turns"], strict=True)]
        assert data["ratio"] == pytest.approx(statistics.median(pairs))
        assert data["ours"] == pytest.approx(statistics.median(data["ours_turns"]))


def test_the_loss_bench_times_both_variants_in_turns_after_warming_each():
    """bench/loss.py: one call of each variant to warm up, then plain, fused, plain, fused ..., one time each."""
    loss_bench = bench_module("loss")
    calls = []
    seconds = loss_bench.in_turns({"plain": lambda: calls.append("plain"), "fused": lambda: calls.append("fused")}, 3)
    assert calls == ["plain", "fused"] * 4
    assert [len(v) for v in seconds.values()] == [3, 3] and all(t >= 0 for v in seconds.values() for t in v)


@pytest.mark.slow
def test_the_fused_projections_bench_times_the_same_work_both_ways():
    """bench/fused_projections.py checks that both variants give the same outputs, then reports the ratio."""
    cmd = [sys.executable, "bench/fused_projections.py", "--config", "configs/smoke.yaml", "--tokens", "64",
           "--turns", "3"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=120).stdout
    assert "q/kv 64/32, d_ff 172, 64 tokens" in out and "separate / fused: " in out and "median of 3 turns" in out


@pytest.mark.slow
def test_the_chat_template_bench_renders_the_same_text_both_ways():
    """bench/chat_template.py asserts that the bounded environment writes what jinja2's plain sandbox writes."""
    cmd = [sys.executable, "bench/chat_template.py", "--conversations", "20", "--turns", "1"]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("20 builtin-chat conversations, ") and out.count(" per conversation (+") == 2, out


# --- the Mac path, on a mocked Mac ---


@pytest.fixture
def mac(monkeypatch):
    import torch

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    monkeypatch.setattr(hardware, "is_apple_silicon", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(scaling, "mlx_installed", lambda: True)


PROFILER = """Graphics/Displays:

    Apple M2 Pro:

      Chipset Model: Apple M2 Pro
      Type: GPU
      Bus: Built-In
      Total Number of Cores: 19
      Vendor: Apple (0x106b)
      Metal Support: Metal 3
"""


def test_mac_plans_torch_on_mps_against_mlx_on_the_gpu(mac, monkeypatch):
    pairs = scaling.backends(["torch", "mlx"])
    assert pairs == [("torch", "mps"), ("mlx", "gpu")]
    assert scaling.compares_mps_with_mlx(pairs)
    monkeypatch.setattr(scaling, "_command", lambda argv: PROFILER if argv[0] == "system_profiler" else "")
    assert scaling.gpu_name() == "Apple M2 Pro, 19 GPU cores"


def test_mac_gpu_name_falls_back_to_mlx(mac, monkeypatch):
    import mlx.core as mx

    monkeypatch.setattr(scaling, "_command", lambda argv: "")
    monkeypatch.setattr(mx, "device_info", lambda: {"device_name": "Apple M3 Max"})
    assert scaling.gpu_name() == "Apple M3 Max"


def test_elsewhere_no_mps_comparison(monkeypatch):
    import torch

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # MPS only counts on Apple Silicon
    pairs = scaling.backends(["torch", "mlx"])
    assert pairs[0] == ("torch", "cpu") and not scaling.compares_mps_with_mlx(pairs)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert scaling.backends(["torch"]) == [("torch", "cuda")]
    monkeypatch.setattr(scaling, "_command", lambda argv: "NVIDIA H100 80GB HBM3\n" if argv[0] == "nvidia-smi" else "")
    assert scaling.gpu_name() == "NVIDIA H100 80GB HBM3"


def test_mac_main_prints_the_winner_and_the_metal_gpu(mac, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(scaling, "_command", lambda argv: PROFILER if argv[0] == "system_profiler" else "")
    speed = {"torch": 1000.0, "mlx": 1500.0}

    def runner(config, steps):
        return lambda case, timeout: {"status": "ok", "tok_s": speed[case.backend], "peak_bytes": 2e9, "memory": "m"}

    monkeypatch.setattr(scaling, "subprocess_runner", runner)
    out = tmp_path / "s.json"
    argv = ["scaling.py", "--d-models", "128,256", "--seqs", "128", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    scaling.main()
    printed = capsys.readouterr().out
    assert "Metal GPU: Apple M2 Pro, 19 GPU cores" in printed
    assert "our MLX model (gpu) vs our torch model (mps): MLX faster at 2 of 2 sizes" in printed
    assert "median 1.50x (the winner: MLX, 1.50x)" in printed
    data = json.loads(out.read_text())
    assert data["mac"] and data["gpu"] == "Apple M2 Pro, 19 GPU cores"
    assert "torch (mps) tok/s" in printed and "mlx (gpu) tok/s" in printed


# --- the budget ---


def test_budget_runs_the_cheap_sizes_and_lists_the_rest_as_not_run_here():
    config = str(ROOT / "config.yaml")
    cases = scaling.plan([("torch", "cpu"), ("mlx", "cpu")], [128, 256, 512, 768], [128, 512, 1024], 2048, config)
    flops = [scaling.step_flops(c, config) for c in cases]
    assert flops == sorted(flops) and len(cases) == 24
    now = [0.0]
    rate = {"torch": 20e9, "mlx": 8e9}  # FLOP/s; each run costs 5 s of start-up plus its steps

    def run_one(case, timeout):
        seconds = 5 + (2 + scaling.WARMUP_STEPS) * scaling.step_flops(case, config) / rate[case.backend]
        now[0] += min(seconds, timeout)
        if seconds > timeout:
            return {"status": "timeout"}
        tok_s = rate[case.backend] * case.batch_size * case.seq_len / scaling.step_flops(case, config)
        return {"status": "ok", "tok_s": tok_s, "peak_bytes": 1e9, "memory": "peak RSS"}

    results = scaling.run_plan(cases, 120, 2, config, run_one, clock=lambda: now[0])
    ran = [r for r in results if r["status"] == "ok"]
    skipped = [r for r in results if r["status"] == "skipped"]
    assert ran and skipped and len(ran) + len(skipped) == 24
    assert now[0] <= 120  # predicted from the first run per backend: nothing started that would overrun
    assert all(r["note"].startswith("not run here (run on a Mac/GPU)") for r in skipped)
    assert ran[0]["d_model"] == 128 and ran[0]["seq_len"] == 128
    assert {(r["backend"], r["d_model"]) for r in skipped} >= {("torch", 768), ("mlx", 768)}
    table = scaling.table(results)
    assert "| 768 | 1024 x 2 | not run here (run on a Mac/GPU): " in table
    assert len(table.splitlines()) == 2 + 12


def test_skip_reasons():
    assert scaling.skip_reason(None, 10) is None  # nothing measured yet on this backend: run it
    assert scaling.skip_reason(5, 10) is None
    assert scaling.skip_reason(50, 10) == "not run here (run on a Mac/GPU): ~50 s predicted, 10 s of the budget left"
    assert scaling.skip_reason(None, 0) == "not run here (run on a Mac/GPU): the budget is spent"


def test_a_run_that_outlasts_the_budget_is_reported_as_not_run():
    config = str(ROOT / "configs" / "smoke.yaml")
    cases = scaling.plan([("torch", "cpu")], [64], [32], 64, config)
    results = scaling.run_plan(cases, 10, 1, config, lambda case, timeout: {"status": "timeout"})
    assert results[0]["status"] == "timeout" and results[0]["note"].startswith(scaling.NOT_RUN)


@pytest.mark.slow
def test_scaling_quick_runs_both_backends_in_subprocesses(tmp_path):
    out = tmp_path / "s.json"
    cmd = [sys.executable, "bench/scaling.py", "--quick", "--json", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)
    results = json.loads(out.read_text())["results"]
    assert {(r["backend"], r["status"]) for r in results} == {("torch", "ok"), ("mlx", "ok")} and len(results) == 4
    assert all(r["tok_s"] > 0 and r["peak_bytes"] > 0 for r in results)


# --- time to loss ---


@pytest.mark.slow
def test_time_to_loss_runs_the_transformers_loop_and_ours_on_the_same_weights_batches_and_evaluation(tmp_path):
    """The reference loop (transformers + torch AdamW + LambdaLR cosine) and ours (our model, fused loss, our
    schedule) are the same training, so the bench compares speed only: equal validation losses step for step."""
    out = tmp_path / "ttl.json"
    args = ["--only", "hf-adamw", "--only", "torch-adamw", "--max-steps", "4", "--eval-every", "2", "--warmup", "2"]
    args += ["--target", "0", "--tokenizer", "bpe:512", "--max-documents", "200", "--eval-windows", "8"]
    args += ["--cache-dir", str(tmp_path), "--json", str(out)]
    bench = str(ROOT / "bench" / "time_to_loss.py")
    done = subprocess.run([sys.executable, bench, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    hf, ours = json.loads(out.read_text())["results"]
    assert (hf["variant"], ours["variant"]) == ("hf-adamw", "torch-adamw")
    assert [step for step, *_ in hf["history"]] == [step for step, *_ in ours["history"]] == [2, 4]
    for (_, _, a, bpb_a), (_, _, b, bpb_b) in zip(hf["history"], ours["history"], strict=True):
        assert abs(a - b) < 1e-4 * a and abs(bpb_a - bpb_b) < 1e-4 * bpb_a
        assert bpb_a == pytest.approx(a / (math.log(2) * hf["val_bytes_per_token"]))  # bits per byte of that loss
    assert hf["history"][1][2] < hf["history"][0][2] < 6.3  # it learns (ln 512 = 6.24 at the start)
    assert not hf["reached"] and "not reached" in done.stdout


@pytest.mark.slow
def test_cuda_check_runs_the_steps_named_and_logs_each(tmp_path):
    """bench/cuda_check.sh is run where no test can follow it (a GPU machine): its plumbing is checked here,
    on the smoke config: the steps named run with their own log, the others do not, a failing one (the
    probe: no GPU here) does not stop the next."""
    env = {**os.environ, "PYTHON": sys.executable, "CONFIG": "configs/smoke.yaml", "BATCH": "2",
           "SEQ": "32", "STEPS": "4", "WORK": str(tmp_path / "work")}  # fmt: skip
    out = tmp_path / "results"
    run = subprocess.run(["bash", str(ROOT / "bench" / "cuda_check.sh"), str(out), "probe", "dry_run"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "== probe: rc 2" in run.stdout and "sees no CUDA GPU" in (out / "probe.log").read_text()
    assert "memory estimate" in (out / "dry_run.log").read_text() and "== dry_run: rc 0" in run.stdout
    assert not (out / "train.log").exists() and not (out / "bench_compile.log").exists()
    assert "== mlx" not in run.stdout  # not named: not even checked
    assert "== sweep" not in run.stdout  # only when named


@pytest.mark.slow
def test_cuda_check_sweep_runs_each_batch_with_its_estimate_first(tmp_path):
    """The batch sweep (named only): --dry-run then a short run per batch in SWEEP, each with its own log."""
    env = {**os.environ, "PYTHON": sys.executable, "CONFIG": "configs/smoke.yaml", "BATCH": "2", "SEQ": "32",
           "SWEEP": "2 3", "WORK": str(tmp_path / "work")}  # fmt: skip
    out = tmp_path / "results"
    run = subprocess.run(["bash", str(ROOT / "bench" / "cuda_check.sh"), str(out), "sweep"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    for batch in (2, 3):
        dry = (out / f"sweep_dry_{batch}.log").read_text()
        assert "memory estimate" in dry and f"{batch * 32} tokens per step" in dry, dry
        log = (out / f"sweep_{batch}.log").read_text()
        assert f"== sweep_{batch}: rc 0" in run.stdout and f"training batch{batch}:" in log, log[-2000:]
        assert "step 30/30" in log, log[-2000:]
    assert not (out / "train.log").exists()


def test_every_ablate_lever_is_a_valid_change_of_the_speedrun_recipe():
    """Each lever of bench/ablate.py loads on configs/speedrun.yaml and changes it: a lever the recipe has since
    adopted (QK-norm, a vocabulary) would be a second baseline row, and a renamed key an error mid-screen."""
    from tinyllama.core.config import load_config, parse_overrides

    ablate = bench_module("ablate")
    base = load_config(ablate.CONFIG)
    for name in ablate.LEVERS:
        changed = load_config(ablate.CONFIG, parse_overrides(ablate.lever_args(name)))
        assert (changed == base) == (name == "baseline"), name


@pytest.mark.slow
def test_ablate_runs_each_lever_within_its_budget_and_tables_the_val_bpb(tmp_path, data_cache):
    """bench/ablate.py on the smoke config: each lever trains in its own process under training.time_budget and
    is read back from its metrics.jsonl (final val bpb, steps, epochs) into one table."""
    out, rows = tmp_path / "ablate.json", tmp_path / "rows.md"
    args = ["--config", "configs/smoke.yaml", "--budget", "0.1", "--only", "baseline", "--only", "no qk_norm",
            "--json", str(out), "--markdown", str(rows), "--work", str(tmp_path / "runs"),
            "--training.warmup_steps", "3", "--training.eval_every", "10", "--data.cache_dir", str(data_cache),
            "--hardware.accelerator", "cpu"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two threads beside another worker spin: steps 30x slower
    done = subprocess.run([sys.executable, "bench/ablate.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = {r["lever"]: r for r in json.loads(out.read_text())["results"]}
    for name in ("baseline", "no qk_norm"):
        assert 0 < results[name]["val_bpb"] < 8 and results[name]["steps"] > 3 and results[name]["epochs"] > 0
        # the minutes column is the time the run itself logged (whether a budget is kept is test_time_budget's)
        metrics = bench_module("ablate").run_folder(tmp_path / "runs", name, 0) / "run" / "metrics.jsonl"
        last = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["split"] == "train"][-1]
        assert results[name]["minutes"] == pytest.approx(last["time"] / 60) and last["time"] > 0
    table = rows.read_text()
    assert "| no qk_norm |" in table and "--model.qk_norm false" in table and "| minutes |" in table


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_serve_step_times_the_batch_step_in_both_threads_and_the_head(backend):
    """bench/serve_step.py on the smoke model: a line per row count, with the step in the main thread and in a
    second one, their ratio, and the LM head alone."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--backend", backend, "--config", "configs/smoke.yaml", "--rows", "1", "3", "--steps", "3"]
    done = subprocess.run([sys.executable, "bench/serve_step.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    line = r"(\d+) rows: step ([\d.]+) ms in the main thread, ([\d.]+) ms in a second thread \(([\d.]+)x\); LM head"
    rows = [re.match(line, text) for text in done.stdout.splitlines()[1:]]
    assert [int(m.group(1)) for m in rows if m] == [1, 3], done.stdout
    for m in rows:
        main, other, ratio = (float(m.group(i)) for i in (2, 3, 4))
        assert main > 0 and other > 0 and ratio == pytest.approx(other / main, abs=0.02), m.group(0)
    assert done.stdout.startswith(f"{backend} cpu float32, smoke.yaml's model")
