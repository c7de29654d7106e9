"""Nothing a user does loses work: non-finite runs, used and locked output directories, resume mismatches,
hostile pointers and files, signals (also to one rank of a distributed run), SIGKILL at any moment."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from helpers import ROOT, file_hashes, max_weight_diff, smoke_argv, train_losses
from safetensors.numpy import save_file

from tinyllama import train_cuda, train_mlx
from tinyllama.core.checkpoint import list_checkpoints, read_trainer_state, resolve_resume
from tinyllama.core.cli import UserError
from tinyllama.core.config import ConfigError, load_config
from tinyllama.core.fs import is_temporary
from tinyllama.core.model_files import CheckpointError, load_optimizer, load_weights, read_model_config

TRAINERS = {"mlx": train_mlx.main, "torch": lambda argv: train_cuda.main([*argv, "--hardware.accelerator", "cpu"])}
SCRIPT = {"mlx": "train_mlx.py", "torch": "train_cuda.py"}
QUIET = ("--training.eval_every", "0", "--training.save_every", "0")


def train(backend, run_dir, cache, *extra):
    TRAINERS[backend](smoke_argv(run_dir, cache, *extra))
    return run_dir / "ckpt"


def script_argv(backend, run_dir, cache, *extra):
    """The command line of a trainer run as a user runs it (a fresh process)."""
    device = ("--hardware.accelerator", "cpu") if backend == "torch" else ()
    return [sys.executable, str(ROOT / SCRIPT[backend]), *smoke_argv(run_dir, cache, *device, *extra)]


def all_finite(ckpt) -> bool:
    return all(np.isfinite(v.astype(np.float32)).all() for v in load_weights(ckpt).values())


# ------------------------------------------------------------------------------------------ non-finite


def test_config_refuses_a_non_finite_learning_rate():
    for value in ("inf", "nan", "-inf"):
        with pytest.raises(ConfigError, match="training.lr must be a finite number"):
            load_config(ROOT / "configs/smoke.yaml", {"training.lr": value})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_a_diverging_run_never_writes_non_finite_weights(backend, tmp_path, data_cache, capsys):
    """lr 1e40 overflows the weights while loss and gradient are still finite: the updated weights are checked
    too. stop: no checkpoint at all; skip: every step skipped, yet every checkpoint is finite and resumable."""
    wild = ("--training.lr", "1e40", "--training.min_lr", "0", "--training.warmup_steps", "0",
            "--training.grad_clip", "0", "--training.max_steps", "3", "--training.save_every", "1")  # fmt: skip
    with pytest.raises(UserError, match="non-finite loss, gradient or weights at step 1"):
        train(backend, tmp_path / "stop", data_cache, *wild)
    assert list_checkpoints(tmp_path / "stop/ckpt") == [] and not (tmp_path / "stop/ckpt/latest").exists()

    out = train(backend, tmp_path / "skip", data_cache, *wild, "--training.on_nonfinite", "skip")
    assert "step 1: non-finite loss, gradient or weights, update skipped" in capsys.readouterr().out
    saved = list_checkpoints(out)
    assert [p.name for p in saved] == ["step-000001.ckpt", "step-000002.ckpt", "final.ckpt"]  # cadence went on
    assert all(all_finite(p) for p in saved) and read_trainer_state(out / "final.ckpt")["updates"] == 0
    assert load_optimizer(out / "final.ckpt") is not None  # resumable even though no update ever applied
    sane = ("--training.lr", "3e-3", "--training.min_lr", "3e-4")  # a resume keeps its run's lr (1e40) unless told
    train(backend, tmp_path / "skip", data_cache, "--training.max_steps", "5", *sane, "--resume", "auto", *QUIET)
    assert read_trainer_state(out / "final.ckpt")["updates"] == 2 and all_finite(out / "final.ckpt")


# ------------------------------------------------------------------------------------ output directory


@pytest.mark.slow
def test_a_used_output_directory_is_refused_then_resumed_or_replaced(tmp_path, data_cache):
    out = train("torch", tmp_path, data_cache, "--training.max_steps", "4", "--training.save_every", "2", *QUIET[:2])
    before = file_hashes(tmp_path)
    with pytest.raises(UserError, match=r"already holds a run \(2 checkpoint\(s\)\); continue it with --resume auto"):
        train("torch", tmp_path, data_cache, "--training.max_steps", "6", *QUIET)
    assert file_hashes(tmp_path) == before  # nothing mixed, nothing truncated
    train("torch", tmp_path, data_cache, "--training.max_steps", "3", "--output.overwrite", "true", *QUIET)
    assert [p.name for p in list_checkpoints(out)] == ["final.ckpt"] and read_trainer_state(out / "final.ckpt")[
        "step"
    ] == 3
    assert sorted(train_losses(tmp_path)) == [1, 2, 3]  # a fresh metrics.jsonl, not the old one's tail


@pytest.mark.parametrize(
    "tail", [b'{"step": 3, "spl', b"\x00" * 40, b'{"step": 3, "note": "caf\xc3'], ids=["torn", "nul", "half-utf8"]
)
def test_a_torn_last_metrics_line_is_dropped_with_a_note(tmp_path, tail, capsys):
    """What a kill mid-write leaves at the end of metrics.jsonl (a cut line; NUL bytes a crashed file system may
    leave) is dropped with one note and the run goes on; a damaged line elsewhere is one line naming it."""
    from tinyllama.core.metrics import MetricsLog

    lines = [json.dumps({"step": step, "split": "train", "loss": 5.0}) for step in (1, 2, 3)]
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + tail)
    log = MetricsLog(tmp_path, resume_step=2)
    assert [r["step"] for r in log.records] == [1, 2] and log.rewound
    assert path.read_text().splitlines() == lines[:2]  # rewritten without the torn line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"note: {path}: dropped its last line, cut short by a kill")
    path.write_bytes(("\n".join([lines[0], "{not json", lines[1]]) + "\n").encode())
    before = path.read_bytes()
    with pytest.raises(UserError, match=f"^{path} line 2 is not a metrics record .*delete that line or the file"):
        MetricsLog(tmp_path, resume_step=2)
    assert path.read_bytes() == before


@pytest.mark.slow
def test_a_resume_after_a_kill_mid_metrics_line_continues(tmp_path, data_cache, capsys):
    """The reviewer's case end to end: a finished run's log torn at its end, then --resume auto to more steps."""
    train("torch", tmp_path, data_cache, "--training.max_steps", "4", "--training.save_every", "2", *QUIET[:2])
    metrics = tmp_path / "logs/smoke/metrics.jsonl"
    with metrics.open("ab") as f:
        f.write(b'{"step": 5, "spl')
    capsys.readouterr()
    train("torch", tmp_path, data_cache, "--training.max_steps", "6", "--resume", "auto", *QUIET)
    assert "dropped its last line, cut short by a kill mid-write" in capsys.readouterr().err
    assert sorted(train_losses(tmp_path)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_output_paths_that_cannot_be_used(tmp_path, data_cache):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="output.dir .*file is a file, not a directory"):
        train("torch", tmp_path, data_cache, "--output.dir", str(tmp_path / "file"), *QUIET)
    for name in ("../escape", "/abs", "a/b", ".."):
        with pytest.raises(ConfigError, match="output.run_name .* must be a plain name"):
            load_config(ROOT / "configs/smoke.yaml", {"output.run_name": name})
    with pytest.raises(ConfigError, match="model.max_seq_len 10000000000 is beyond"):
        load_config(ROOT / "configs/smoke.yaml", {"model.max_seq_len": "1e10"})


@pytest.mark.slow
def test_latest_pointing_outside_output_dir_is_refused(tmp_path, data_cache):
    out = train("torch", tmp_path / "a", data_cache, "--training.max_steps", "2", *QUIET)
    for pointer in ("../../a/ckpt/final.ckpt", str(out / "final.ckpt"), ".."):
        (out / "latest").write_text(pointer + "\n")
        with pytest.raises(CheckpointError, match="not a checkpoint in"):
            resolve_resume("auto", out)


@pytest.mark.slow
def test_a_second_trainer_on_the_same_directory_is_refused(tmp_path, data_cache):
    argv = script_argv("torch", tmp_path, data_cache, "--training.max_steps", "100000", *QUIET)
    first = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        metrics = tmp_path / "logs/smoke/metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            time.sleep(0.1)
        with pytest.raises(UserError, match=rf"another training run \(pid {first.pid}\) is writing to"):
            train("torch", tmp_path, data_cache, "--resume", "auto", *QUIET)
    finally:
        first.send_signal(signal.SIGINT)
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    steps = sorted(train_losses(tmp_path))
    assert steps == list(range(1, len(steps) + 1))  # the first run's log was never touched by the second
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == [f"step-{steps[-1]:06d}.ckpt"]


@pytest.mark.slow
def test_overwrite_never_removes_what_the_run_did_not_write(tmp_path, data_cache, capsys):
    """An imported model in output.dir (docs/convert.md's import -> init_from) is neither refused as a run
    nor pruned, and the refusal's own fix, output.overwrite, deletes only the earlier run's files: never the
    checkpoint this run starts from."""
    source = train("torch", tmp_path / "source", data_cache, "--training.max_steps", "1", *QUIET) / "final.ckpt"
    out = tmp_path / "ckpt"
    out.mkdir()
    smol = out / "smol.ckpt"  # as `python -m convert import ... checkpoints/smol.ckpt` leaves it
    shutil.copytree(source, smol)
    (smol / "optimizer.safetensors").unlink()
    (smol / "trainer_state.json").write_text(json.dumps({"step": 0, "tokens_seen": 0, "backend": "convert"}))
    kept = file_hashes(smol)
    fine_tune = ("--training.init_from", str(smol), "--training.max_steps", "3", "--training.save_every", "1",
                 "--training.keep_last", "1", "--training.eval_every", "0")  # fmt: skip
    train("torch", tmp_path, data_cache, *fine_tune)  # not "already holds a run": smol.ckpt is no run
    assert [p.name for p in list_checkpoints(out)] == ["smol.ckpt", "step-000002.ckpt", "final.ckpt"]
    with pytest.raises(UserError, match="already holds a run .*--output.overwrite true \\(deletes that run's"):
        train("torch", tmp_path, data_cache, *fine_tune)
    train("torch", tmp_path, data_cache, *fine_tune, "--output.overwrite", "true")  # the suggested fix: safe
    assert file_hashes(smol) == kept and read_trainer_state(out / "final.ckpt")["step"] == 3
    before = file_hashes(tmp_path)
    with pytest.raises(UserError, match="is a checkpoint of the run in .* which this run would replace; copy it"):
        train("torch", tmp_path, data_cache, "--training.init_from", str(out / "final.ckpt"),
              "--output.overwrite", "true", *QUIET)  # fmt: skip
    assert file_hashes(tmp_path) == before  # refused before anything was deleted


@pytest.mark.slow
def test_a_resume_continues_with_its_runs_own_settings(tmp_path, data_cache, capsys):
    """As after `make train` (other settings than the config file's): `--resume auto --training.max_steps N`
    with the config file alone continues the run as it was, the one change listed, the file's unused keys named."""
    own = ("--training.seq_len", "32", "--training.batch_size", "4", "--training.schedule", "wsd",
           "--training.warmup_steps", "2", "--training.eval_every", "0")  # fmt: skip
    train("torch", tmp_path, data_cache, "--training.max_steps", "4", *own)
    capsys.readouterr()
    train("torch", tmp_path, data_cache, "--resume", "auto", "--training.max_steps", "6")
    err = capsys.readouterr().err
    assert "with its own settings; changed: training.max_steps 4 -> 6\n" in err
    assert "smoke.yaml's training.seq_len, training.batch_size, training.warmup_steps, training.schedule, " in err
    saved = yaml.safe_load((tmp_path / "ckpt/final.ckpt/train_config.yaml").read_text())["training"]
    assert (saved["seq_len"], saved["batch_size"], saved["schedule"], saved["warmup_steps"]) == (32, 4, "wsd", 2)
    assert sorted(train_losses(tmp_path)) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(UserError, match="training.seq_len was 32, now 64; keep it equal"):
        train("torch", tmp_path, data_cache, "--resume", "auto", "--training.seq_len", "64")


# --------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_refuses_another_model_tokenizer_or_dataset_and_prints_schedule_changes(tmp_path, data_cache, capsys):
    train("torch", tmp_path, data_cache, "--training.max_steps", "2", *QUIET)
    resume = ("--resume", "auto", *QUIET)
    with pytest.raises(UserError, match=r"the model differs \(model.d_model 64 -> 96"):
        train("torch", tmp_path, data_cache, "--model.d_model", "96", *resume)
    with pytest.raises(UserError, match="it was trained with another tokenizer"):
        train("torch", tmp_path, data_cache, "--data.tokenizer", "bpe:400", *resume)
    own = str(tmp_path / "ckpt/final.ckpt")  # the run's tokenizer, saved in the checkpoint: only the text differs
    with pytest.raises(UserError, match=r"its data differs \(dataset 'builtin', \{'train'"):
        train("torch", tmp_path, data_cache, "--data.max_documents", "30", "--data.tokenizer", own, *resume)
    capsys.readouterr()
    train("torch", tmp_path, data_cache, "--training.max_steps", "4", "--training.lr", "1e-3", *resume)
    assert "changed: training.max_steps 2 -> 4, training.lr 0.003 -> 0.001" in capsys.readouterr().err
    assert read_trainer_state(tmp_path / "ckpt/final.ckpt")["step"] == 4


@pytest.mark.slow
def test_damaged_trainer_state_and_moments_are_named(tmp_path, data_cache):
    out = train("torch", tmp_path, data_cache, "--training.max_steps", "2", *QUIET) / "final.ckpt"
    state = json.loads((out / "trainer_state.json").read_text())
    for damage, message in (({"step": "two"}, "'step' must be an integer"), ([1, 2], "not a JSON object")):
        (out / "trainer_state.json").write_text(json.dumps(damage if isinstance(damage, list) else {**state, **damage}))
        with pytest.raises(CheckpointError, match=message):
            train("torch", tmp_path, data_cache, "--training.max_steps", "3", "--resume", "auto", *QUIET)
    (out / "trainer_state.json").write_text(json.dumps(state))
    moments = load_optimizer(out)
    wrong = {
        **moments,
        "model.layers.0.mlp.up_proj.weight.exp_avg": np.zeros((3, 3), np.float32),
    }  # fused AdamW segfaults
    for damaged, message in (
        (wrong, r"tensor 'model.layers.0.mlp.up_proj.weight.exp_avg' has shape \(3, 3\)"),
        ({k: v for k, v in moments.items() if not k.startswith("model.norm")}, "missing tensor 'model.norm.weight"),
    ):
        save_file(damaged, out / "optimizer.safetensors")
        with pytest.raises(CheckpointError, match="optimizer.safetensors: " + message):
            train("torch", tmp_path, data_cache, "--training.max_steps", "3", "--resume", "auto", *QUIET)


# ----------------------------------------------------------------------------------- weight files


@pytest.mark.slow
def test_weights_are_checked_from_the_header_before_anything_is_read(tmp_path, data_cache, monkeypatch):
    import tinyllama.core.model_files as model_files

    out = train("torch", tmp_path, data_cache, "--training.max_steps", "1", *QUIET) / "final.ckpt"
    weights = load_weights(out)
    reads = []
    monkeypatch.setattr(model_files, "_read_tensors", lambda *a: reads.append(a) or {})
    save_file({**weights, "extra.weight": np.zeros((4096, 4096), np.float32)}, out / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra.weight'"):
        load_weights(out)
    as_int = {k: (v * 100).astype(np.int8) if v.ndim == 2 else v for k, v in weights.items()}
    save_file(as_int, out / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"is I8, not floating point \(quantized or integer weights\)"):
        load_weights(out)
    assert reads == []  # refused on the header alone: no tensor was read
    monkeypatch.undo()
    save_file({**weights, "lm_head.weight": weights["model.embed_tokens.weight"] * np.nan}, out / "model.safetensors")
    assert "lm_head.weight" not in load_weights(out)  # a tied model's stored head is ignored, NaN or not
    save_file({**weights, "model.norm.weight": weights["model.norm.weight"] * np.inf}, out / "model.safetensors")
    with pytest.raises(CheckpointError, match="'model.norm.weight' holds NaN or inf"):
        load_weights(out)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_attention_heads": 0}, "'num_attention_heads' must be a positive integer, got 0"),
        ({"hidden_size": None}, "'hidden_size' is missing"),
        ({"vocab_size": "many"}, "'vocab_size' must be a positive integer"),
        ({"rope_scaling": "linear"}, "'rope_scaling' must be an object or null"),
        ({"max_position_embeddings": 1e10}, "max_seq_len 10000000000 is beyond"),
        ({"num_key_value_heads": 5}, "must be a multiple of model.n_kv_heads"),
    ],
)
@pytest.mark.slow
def test_malformed_config_json_is_one_named_line(tmp_path, data_cache, change, message):
    out = train("torch", tmp_path, data_cache, "--training.max_steps", "1", *QUIET) / "final.ckpt"
    hf = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**hf, **change}))
    with pytest.raises(CheckpointError, match=message):
        read_model_config(out)


@pytest.mark.slow
def test_pickles_and_remote_code_are_never_run(tmp_path, capsys):
    """A directory holding only a pickle is refused without unpickling it; `auto_map` code is never imported."""
    from helpers import TINY_MODELS, random_weights, write_word_tokenizer

    from tinyllama import infer
    from tinyllama.core.checkpoint import save_checkpoint
    from tinyllama.core.cli import run_cli

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "pickle-only"
    bad.mkdir()
    cfg = TINY_MODELS["gqa8x2-tied"]
    good = save_checkpoint(tmp_path / "good.ckpt", random_weights(cfg), cfg, tokenizer_dir=write_word_tokenizer(
        tmp_path / "tok", cfg.vocab_size))  # fmt: skip
    (bad / "config.json").write_text((good / "config.json").read_text())
    (bad / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    hf = json.loads((good / "config.json").read_text())
    (good / "config.json").write_text(json.dumps({**hf, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    (good / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    for ckpt, code in ((bad, 2), (good, 0)):
        try:
            run_cli(lambda ckpt=ckpt: infer.main(["--ckpt", str(ckpt), "--prompt", "w5", "--max-new-tokens", "2"]))
            exit_code = 0
        except SystemExit as exc:
            exit_code = exc.code
        assert exit_code == code
    assert "has only pickle weights (*.bin); we read safetensors only" in capsys.readouterr().err
    assert not marker.exists()


# ---------------------------------------------------------------------------------- signals, launch


@pytest.mark.slow
def test_ctrl_c_while_importing_is_one_line(tmp_path, data_cache):
    """A sitecustomize makes `import torch` wait (after leaving a marker), so the signal surely lands there."""
    hook = tmp_path / "hook"
    hook.mkdir()
    marker = tmp_path / "importing-torch"
    (hook / "sitecustomize.py").write_text(f"""
import importlib.abc, sys, time
class Slow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            open({str(marker)!r}, "w").close()
            time.sleep(30)
        return None
sys.meta_path.insert(0, Slow())
""")
    env = dict(os.environ, PYTHONPATH=str(hook))
    argv = script_argv("torch", tmp_path, data_cache)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert marker.exists() and proc.returncode == 130 and err.strip() == "interrupted", err


def test_trainers_refuse_the_other_frameworks_accelerator_and_a_wrong_process_count(tmp_path, data_cache):
    with pytest.raises(UserError, match="hardware.accelerator is mlx: train with train_mlx.py"):
        train_cuda.main(smoke_argv(tmp_path, data_cache, "--hardware.accelerator", "mlx"))
    with pytest.raises(UserError, match="hardware.accelerator is cpu: train with train_cuda.py"):
        train_mlx.main(smoke_argv(tmp_path, data_cache, "--hardware.accelerator", "cpu"))
    with pytest.raises(UserError, match="hardware.devices is 2 but 1 process"):
        train("torch", tmp_path, data_cache, "--hardware.devices", "2")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.slow
def test_train_py_launches_hardware_devices_processes(tmp_path, data_cache):
    argv = smoke_argv(tmp_path, data_cache, "--hardware.accelerator", "cpu", "--hardware.devices", "2",
                      "--training.batch_size", "4", "--training.max_steps", "3", *QUIET)  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert read_trainer_state(tmp_path / "ckpt/final.ckpt")["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_sigterm_to_one_rank_stops_both_at_the_same_step(backend, tmp_path, data_cache):
    argv = smoke_argv(tmp_path, data_cache, "--training.batch_size", "4", "--training.max_steps", "100000", *QUIET)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if backend == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "train_cuda.py", *argv, "--hardware.accelerator", "cpu"]  # fmt: skip
    else:
        launcher = os.path.join(os.path.dirname(sys.executable), "mlx.launch")
        cmd = [launcher, "-n", "2", "--backend", "ring", "--starting-port", str(21000 + os.getpid() % 20000),
               "--cwd", str(ROOT), "--python", sys.executable, "train_mlx.py", *argv]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "logs/smoke/metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    rank1 = subprocess.run(["pgrep", "-f", f"{tmp_path}.*"], capture_output=True, text=True).stdout.split()
    trainers = [int(p) for p in rank1 if int(p) != proc.pid and _is_rank(int(p), 1)]
    assert len(trainers) == 1, (rank1, trainers)
    os.kill(trainers[0], signal.SIGTERM)  # one rank only
    out, _ = proc.communicate(timeout=180)  # a hang fails here
    assert proc.returncode == 0, out[-3000:]
    saved = list_checkpoints(tmp_path / "ckpt")
    assert len(saved) == 1 and "stopped at step" in out
    assert read_trainer_state(saved[0])["step"] == max(train_losses(tmp_path))


def _is_rank(pid: int, rank: int) -> bool:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return False
    return f"RANK={rank}".encode() in env or f"MLX_RANK={rank}".encode() in env


# ------------------------------------------------------------------------------------ crash safety


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_sigkill_at_random_moments_loses_at_most_a_step_and_resumes_exactly(backend, tmp_path, data_cache):
    """>= 20 SIGKILLs at seeded random moments of a run that saves every step; after each: every *.ckpt loads
    whole, debris is never taken for a checkpoint and is cleared by the next start; the final weights equal an
    uninterrupted run's (1e-5 relative)."""
    # 20 lives killed a few steps in each, then one that finishes. A busy machine notices a life's first
    # step late and lets it run several: the schedule is long enough that 20 kills always fit before its end.
    total = 200
    steps = ("--training.max_steps", str(total), "--training.eval_every", "0", "--training.keep_last", "2")
    straight = script_argv(backend, tmp_path / "straight", data_cache, *steps, "--training.save_every", "0")
    subprocess.run(straight, cwd=ROOT, check=True, capture_output=True)  # the same process setup (BLAS) as the lives
    run_dir = tmp_path / "killed"
    argv = script_argv(backend, run_dir, data_cache, *steps, "--training.save_every", "1", "--resume", "auto")
    rng = np.random.default_rng(0)
    kills = 0
    while True:
        before = read_trainer_state(run_dir / "ckpt/final.ckpt") if (run_dir / "ckpt/final.ckpt").exists() else {}
        if before.get("step") == total:
            break
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills >= 20:
            _, err = proc.communicate(timeout=300)  # the last life runs to the end
            assert proc.returncode == 0, err[-2000:]
            continue
        metrics = run_dir / "logs/smoke/metrics.jsonl"
        seen = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        early = rng.random() < 0.2  # a fifth of the kills land anywhere in start-up, the rest mid-training
        kill_at = time.time() + rng.uniform(0.1, 2.5) if early else float("inf")
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if not early and metrics.exists() and len(metrics.read_text().splitlines()) > seen:
                kill_at = time.time() + rng.uniform(0, 0.15)  # a few steps in: often inside a checkpoint write
                early = True
            if time.time() >= kill_at:
                proc.kill()
                kills += 1
                break
            time.sleep(0.01)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
        for ckpt in list_checkpoints(run_dir / "ckpt"):  # every finished checkpoint loads completely
            assert not is_temporary(ckpt)
            load_weights(ckpt), load_optimizer(ckpt), read_trainer_state(ckpt)["step"]
    assert kills >= 20, kills
    (run_dir / "kills").write_text(str(kills))
    assert not [p for p in (run_dir / "ckpt").iterdir() if is_temporary(p)]  # leftovers cleared at restarts
    a, b = tmp_path / "straight/ckpt/final.ckpt", run_dir / "ckpt/final.ckpt"
    scale = max(float(np.abs(v.astype(np.float32)).max()) for v in load_weights(a).values())
    assert max_weight_diff(a, b) <= 1e-5 * scale


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_write_keeps_earlier_checkpoints(tmp_path, data_cache):
    """output.dir on a real 4 MB tmpfs: the third checkpoint does not fit. One line, exit 2, the first two
    intact and no debris; with space again, --resume auto carries on from the last good one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        extra = ("--output.dir", str(disk / "ckpt"), "--training.max_steps", "8", "--training.save_every", "1",
                 "--training.eval_every", "0")  # fmt: skip
        argv = script_argv("torch", tmp_path, data_cache, *extra)
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
        lines = [line for line in out.stderr.splitlines() if line.strip() and "step/s" not in line]
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert lines[-1].startswith("error: cannot use") and "No space left on device" in lines[-1], lines
        saved = list_checkpoints(disk / "ckpt")
        assert [p.name for p in saved] == ["step-000001.ckpt", "step-000002.ckpt"]
        assert all(all_finite(p) and load_optimizer(p) for p in saved)
        assert not [p for p in (disk / "ckpt").iterdir() if is_temporary(p)]
        assert resolve_resume("auto", disk / "ckpt") == disk / "ckpt/step-000002.ckpt"
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        out = subprocess.run([*argv, "--resume", "auto"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert read_trainer_state(disk / "ckpt/final.ckpt")["step"] == 8
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_read_only_output_directory_is_one_line(tmp_path, data_cache):
    """A read-only bind mount over a finished run: resuming there is refused before any work, nothing changes."""
    train("torch", tmp_path / "run", data_cache, "--training.max_steps", "2", *QUIET)
    view = tmp_path / "view"
    view.mkdir()
    bound = subprocess.run(["mount", "--bind", str(tmp_path / "run"), str(view)], capture_output=True)
    if bound.returncode:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True, capture_output=True)
        before = file_hashes(tmp_path / "run")
        argv = ("--training.max_steps", "4", "--resume", "auto", *QUIET)
        with pytest.raises(UserError, match=r"output.dir .*view/ckpt is not writable \(Read-only file system\)"):
            TRAINERS["torch"](smoke_argv(view, data_cache, *argv))
        assert file_hashes(tmp_path / "run") == before
    finally:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)


@pytest.mark.slow
def test_tokens_per_second_count_training_steps_only(tmp_path, data_cache, monkeypatch):
    """An eval between two log lines does not count as training time in the logged tok/s (and ETA). The
    loop's clock is simulated, so the check does not depend on the machine's load: every reading of it
    advances it by 1 s, an eval by 100 s."""
    import types

    from tinyllama.core import loop as core_loop

    clock = [0.0]

    def tick():
        clock[0] += 1.0
        return clock[0]

    monkeypatch.setattr(core_loop, "time", types.SimpleNamespace(perf_counter=tick, time=time.time))
    original = core_loop.Run.sample_text
    monkeypatch.setattr(
        core_loop.Run, "sample_text", lambda self: clock.__setitem__(0, clock[0] + 100) or original(self)
    )
    args = ("--training.max_steps", "8", "--training.eval_every", "2", "--training.log_every", "2",
            "--training.save_every", "0", "--training.eval_batches", "1")  # fmt: skip
    train("torch", tmp_path, data_cache, *args)
    records = [json.loads(x) for x in (tmp_path / "logs/smoke/metrics.jsonl").read_text().splitlines()]
    rates = [r["tok_per_s"] for r in records if r["split"] == "train"]
    assert max(rates) < 2 * min(rates), rates  # counted, the 100 s evals would cut the later rates ~20x


def test_mfu_uses_the_tf32_peak_when_tf32_is_on():
    from tinyllama.core.hardware import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", "float32", tf32=True) == pytest.approx(494.5e12)
    assert peak_flops("NVIDIA H100 80GB HBM3", "float32") == pytest.approx(989e12 * 0.068)
    assert peak_flops("Tesla V100-SXM2-16GB", "float32", tf32=True) == pytest.approx(125e12 * 0.125)  # no TF32
    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16", tf32=True) == pytest.approx(989e12)


def test_mlx_on_an_nvidia_gpu_takes_the_cards_published_peak(monkeypatch, capsys):
    """mlx[cuda] on Linux: train_mlx.py names the GPU (not the host CPU) and takes its published peak
    instead of timing a matmul (on an H200 the probe read 41 TFLOP/s and MFU 512%)."""
    import mlx.core as mx

    import tinyllama.mlx_model.state as mlx_state
    from tinyllama import train_mlx
    from tinyllama.core.hardware import cpu_name
    from tinyllama.core.loop import Device

    assert mlx_state.device_name() == cpu_name()  # MLX's CPU backend here
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))
    info = {"device_name": "NVIDIA H200", "architecture": "sm_90", "total_memory": 150754820096}
    monkeypatch.setattr(mx, "device_info", lambda: info)
    monkeypatch.setattr(mlx_state.platform, "system", lambda: "Linux")
    assert mlx_state.device_name() == "NVIDIA H200"
    monkeypatch.setattr(train_mlx, "measured_gemm_flops", lambda dtype: pytest.fail("probed a GPU with a known peak"))
    devices = []
    monkeypatch.setattr(train_mlx, "Device", lambda *a, **k: devices.append(a) or Device(*a, **k))
    train_mlx.main(["--config", str(ROOT / "configs" / "gpt2-124m.yaml"), "--dry-run", "--hardware.accelerator", "mlx"])
    assert "(NVIDIA H200), memory 150.8 GB" in capsys.readouterr().out  # the card's memory, not the host's
    assert devices[0][2] == 989e12  # the H200's published bf16 peak (the config trains in bf16)


def test_measured_peak_is_the_rate_of_the_timed_matmul():
    """A stand-in matmul that takes 20 ms: 2 n^3 FLOPs per call -> 2 n^3 / 0.02 FLOP/s (timer noise aside)."""
    from tinyllama.core.hardware import measured_peak_flops

    calls = []
    rate = measured_peak_flops(lambda: calls.append(time.sleep(0.02)), n=100, seconds=0.3)
    assert rate == pytest.approx(2 * 100**3 / 0.02, rel=0.3) and len(calls) >= 10
