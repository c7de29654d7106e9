"""train_cuda.py on the CPU: learns, resumes exactly, runs data parallel under torchrun (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, assert_same_logits_elsewhere, max_weight_diff, smoke_argv, train_losses

from tinyllama import train_cuda
from tinyllama.core.checkpoint import list_checkpoints, read_trainer_state
from tinyllama.core.cli import UserError, human_bytes
from tinyllama.core.model_files import is_checkpoint

pytestmark = pytest.mark.slow  # each test trains end to end


def run(tmp, cache, *extra):
    train_cuda.main(smoke_argv(tmp, cache, "--hardware.accelerator", "cpu", *extra))
    return tmp / "ckpt"


def test_smoke_training_learns_and_checkpoint_loads_elsewhere(tmp_path, data_cache):
    ckpt_dir = run(tmp_path, data_cache)
    losses = train_losses(tmp_path)
    assert len(losses) == 40
    records = [json.loads(line) for line in (tmp_path / "logs/smoke/metrics.jsonl").read_text().splitlines()]
    mfu = [r["mfu"] for r in records if r["split"] == "train"]
    assert len(mfu) == 40 and all(0 < m < 1 for m in mfu)  # on a CPU: against its measured GEMM rate
    # from uniform over 512 tokens (ln 512 = 6.24) to well below: at least the unigram statistics are learnt
    assert np.mean([losses[s] for s in (38, 39, 40)]) < np.mean([losses[s] for s in (1, 2, 3)]) - 0.7
    final = ckpt_dir / "final.ckpt"
    assert is_checkpoint(final) and read_trainer_state(final)["backend"] == "torch"
    assert_same_logits_elsewhere(final)


def test_resume_is_exact_with_grad_accum(tmp_path, data_cache):
    args = ("--training.grad_accum", "2", "--training.batch_size", "4", "--training.max_steps", "12",
            "--training.eval_every", "0", "--training.save_every", "6")  # fmt: skip
    run(tmp_path / "straight", data_cache, *args)
    run(tmp_path / "resumed", data_cache, *args, "--resume", str(tmp_path / "straight" / "ckpt" / "step-000006.ckpt"))
    a, b = train_losses(tmp_path / "straight"), train_losses(tmp_path / "resumed")
    assert sorted(b) == list(range(7, 13))
    assert all(abs(a[s] - b[s]) < 1e-5 for s in b)
    final = "ckpt/final.ckpt"
    assert max_weight_diff(tmp_path / "straight" / final, tmp_path / "resumed" / final) < 1e-6


def test_grad_accum_equals_one_big_batch(tmp_path, data_cache):
    common = ("--training.max_steps", "5", "--training.eval_every", "0", "--training.save_every", "0")
    run(tmp_path / "accum", data_cache, *common, "--training.grad_accum", "4", "--training.batch_size", "2")
    run(tmp_path / "big", data_cache, *common, "--training.grad_accum", "1", "--training.batch_size", "8")
    a, b = train_losses(tmp_path / "accum"), train_losses(tmp_path / "big")
    assert all(abs(a[s] - b[s]) < 1e-4 for s in range(1, 6))


def test_bf16_autocast_follows_the_fp32_run(tmp_path, data_cache):
    """The CUDA recipe (bf16 autocast over fp32 master weights, fused loss in bf16 matmuls), on the CPU."""
    common = ("--training.max_steps", "20", "--training.eval_every", "0", "--training.save_every", "0")
    run(tmp_path / "fp32", data_cache, *common)
    run(tmp_path / "bf16", data_cache, *common, "--training.dtype", "bfloat16")
    a, b = train_losses(tmp_path / "fp32"), train_losses(tmp_path / "bf16")
    assert all(abs(a[s] - b[s]) < 0.03 * a[s] for s in range(1, 21)), (a, b)
    assert np.mean([b[s] for s in (18, 19, 20)]) < np.mean([b[s] for s in (1, 2, 3)]) - 0.5  # it learns
    assert a != b  # bf16 matmuls really ran


def test_a_training_step_reads_from_the_device_once(tmp_path, data_cache, monkeypatch):
    """On a GPU every read of a tensor's value waits for the queued work: one read per step (loss, gradient
    norm and weight norm together), counted on the CPU as the difference between an 8- and a 4-step run."""
    import torch

    reads = []
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = {}
    for steps in (4, 8):
        reads.clear()
        run(tmp_path / str(steps), data_cache, "--training.max_steps", str(steps), "--training.eval_every", "0",
            "--training.save_every", "0")  # fmt: skip
        counts[steps] = len(reads)
    assert counts[8] - counts[4] == 4, counts
    assert len(train_losses(tmp_path / "8")) == 8


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(tmp_path, data_cache, strategy):
    common = ("--training.max_steps", "6", "--training.eval_every", "0", "--training.save_every", "0")
    run(tmp_path / "single", data_cache, *common, "--training.batch_size", "8")
    argv = smoke_argv(tmp_path / "ddp", data_cache, "--hardware.accelerator", "cpu", *common,
                      "--training.batch_size", "2", "--training.grad_accum", "2",
                      "--hardware.distributed", strategy)  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "train_cuda.py",
        *argv,
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    a, b = train_losses(tmp_path / "single"), train_losses(tmp_path / "ddp")
    assert all(abs(a[s] - b[s]) < 1e-4 for s in range(1, 7)), (a, b)
    # all-reduce vs one big batch differ in fp rounding only, which Adam's normalised update amplifies (~1e-5)
    assert max_weight_diff(tmp_path / "single/ckpt/final.ckpt", tmp_path / "ddp/ckpt/final.ckpt") < 1e-4
    assert read_trainer_state(tmp_path / "ddp/ckpt/final.ckpt")["world_size"] == 2
    assert [p.name for p in list_checkpoints(tmp_path / "ddp/ckpt")] == ["final.ckpt"]  # rank 0 only wrote


def test_flash_attn_asked_for_but_missing_is_a_clear_error(tmp_path, data_cache):
    from tinyllama.core.cli import UserError

    with pytest.raises(UserError, match="flash"):
        run(tmp_path, data_cache, "--hardware.attention", "flash_attn", "--training.max_steps", "1")


def test_dry_run_counts_the_chunked_loss_not_full_logits(capsys):
    from tinyllama.core.architecture import count_parameters
    from tinyllama.core.config import load_config
    from tinyllama.core.training import estimate_memory
    from tinyllama.torch_model.loss import held_bytes

    argv = ["--config", str(ROOT / "configs/gpt2-124m.yaml"), "--dry-run", "--hardware.accelerator", "cpu"]
    train_cuda.main(argv)
    out = capsys.readouterr().out
    assert "123.6M parameters" in out and "memory estimate" in out
    cfg = load_config(ROOT / "configs/gpt2-124m.yaml")
    full = estimate_memory(cfg)
    assert full["logits"] == 16 * 1024 * 50304 * 4 * 2  # 6.6 GB of fp32 logits and their gradient
    # bf16 on the CPU, eager: 25 equal chunks of the 3.3 GB of fp32 logits, three such buffers at once
    chunked = held_bytes(16 * 1024, 50304, 768, "cpu", "bfloat16", compiled=False)
    assert chunked == pytest.approx(3 * 16 * 1024 * 50304 * 4 / 25 + 8 * 50304 * 768)
    assert f"logits {human_bytes(chunked)}" in out
    assert f"weights {human_bytes(count_parameters(cfg.model) * 4)}" in out  # fp32 master weights under autocast
    # compiled on a GPU: one fused kernel between the bf16 logits and bf16 gradient of a 1 GiB chunk
    assert held_bytes(16 * 1024, 50304, 768, "cuda", "bfloat16", compiled=True) == pytest.approx(
        16 * 1024 * 50304 * 4 / 4 + 8 * 50304 * 768
    )


def test_dry_run_plans_a_gpu_run_on_a_machine_without_one(capsys, monkeypatch, tmp_path):
    """Planning configs/gpt2-124m.yaml (hardware.accelerator: cuda) from a laptop: the estimate is printed for the
    GPU (compiled, bf16 chunks), then one line saying it cannot start here, what a GPU needs and what this CPU would
    need; exit 1 as for any plan that cannot run here. It was refused (`cuda was asked for but no CUDA GPU`)."""
    import torch

    from tinyllama.core.config import load_config
    from tinyllama.core.training import estimate_memory
    from tinyllama.torch_model.wrap import memory_traits

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train_cuda.main(["--config", str(ROOT / "configs/gpt2-124m.yaml"), "--dry-run"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out.splitlines()
    cfg = load_config(ROOT / "configs/gpt2-124m.yaml")
    gpu = estimate_memory(cfg, memory_traits(cfg, torch.device("cuda"), 0))["total"]
    assert out[0].startswith("model: 123.6M parameters") and out[2].endswith(f"-> about {human_bytes(gpu)}")
    assert out[3] == "device: torch cuda (none here), memory unknown"
    assert out[4].startswith("not here: no CUDA GPU is visible on this machine, so the run cannot start here. ")
    assert f"On a CUDA GPU it needs about {human_bytes(gpu)}: {human_bytes(gpu / 0.9)} or more" in out[4]
    assert "with --hardware.accelerator cpu: about " in out[4] and len(out) == 5
    assert list(tmp_path.iterdir()) == []  # a plan writes nothing
    with pytest.raises(UserError, match="cuda was asked for"):  # training itself still needs the GPU
        train_cuda.main(["--config", str(ROOT / "configs/gpt2-124m.yaml"), "--training.max_steps", "1"])
