"""Muon and the wsd schedule: which weights Muon owns, its update against a written-out numpy reference, the
twin backends step for step, the neutral optimizer state, and resuming (same backend and across)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ROOT, TINY_MODELS, max_weight_diff, random_weights, smoke_argv, tokens_for, train_losses

from tinyllama.core.architecture import moment_shapes, optimizer_roles, parameter_shapes
from tinyllama.core.cli import UserError
from tinyllama.core.config import Config, ConfigError, TrainingConfig, load_config
from tinyllama.core.schedule import lr_at, muon_lr_at

BLOCK_MATRICES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip


def reference_muon(w, g, buf, lr, momentum, weight_decay):
    """Muon written out in float64 numpy, constants spelled here (not imported): (new weight, new buffer)."""
    buf = momentum * buf + (1 - momentum) * g
    update = (1 - momentum) * g + momentum * buf
    tall = update.shape[0] > update.shape[1]
    x = update.T if tall else update
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(5):
        gram = x @ x.T
        x = 3.4445 * x + (-4.7750 * gram + 2.0315 * gram @ gram) @ x
    x = x.T if tall else x
    scale = max(1.0, w.shape[0] / w.shape[1]) ** 0.5
    return w * (1 - lr * weight_decay) - lr * scale * x, buf


# ------------------------------------------------------------------------------ who gets Muon


def test_muon_owns_the_block_matrices_only():
    cfg = TINY_MODELS["mha4-untied"]
    names = list(parameter_shapes(cfg))
    roles = optimizer_roles(cfg, "muon")
    muon = [n for n in names if roles[n] == "muon"]
    assert muon == [f"model.layers.{i}.{m}.weight" for i in range(cfg.n_layers) for m in BLOCK_MATRICES]
    rest = set(names) - set(muon)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= rest
    assert all("layernorm" in n for n in rest if n.startswith("model.layers."))
    assert "muon" not in optimizer_roles(cfg, "adamw").values()
    assert {n for n, role in roles.items() if role == "plain"} == {n for n in names if "norm" in n}
    moments = moment_shapes(cfg, "muon")
    assert moments["model.layers.1.mlp.up_proj.weight.momentum_buffer"] == (cfg.d_ff, cfg.d_model)
    assert "model.layers.1.mlp.up_proj.weight.exp_avg" not in moments
    assert moments["lm_head.weight.exp_avg_sq"] == (cfg.vocab_size, cfg.d_model)
    assert "model.norm.weight.momentum_buffer" not in moments


def test_each_backend_hands_muon_exactly_those_weights():
    import torch

    from tinyllama.mlx_model.optim import load_optimizer_state, make_optimizer
    from tinyllama.mlx_model.state import build_model as mlx_model
    from tinyllama.torch_model.optim import make_optimizer as torch_optimizer
    from tinyllama.torch_model.state import build_model as torch_model

    cfg = TINY_MODELS["mha4-untied"]
    weights = random_weights(cfg)
    expected = {n for n, role in optimizer_roles(cfg, "muon").items() if role == "muon"}
    t = TrainingConfig(optimizer="muon")
    model = torch_model(cfg, weights, device=torch.device("cpu"))
    opt = torch_optimizer(model, t)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for g in opt.muon.param_groups for p in g["params"]} == expected
    assert {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]} == set(weights) - expected
    optimizer = make_optimizer(t, cfg)
    load_optimizer_state(optimizer, mlx_model(cfg, weights), None, 0)
    from mlx.utils import tree_flatten

    muon_state, adam_state = (dict(tree_flatten(part.state)) for part in optimizer.optimizers)
    assert {k.rpartition(".")[0] for k in muon_state if k.endswith(".momentum_buffer")} == expected
    assert {k.rpartition(".")[0] for k in adam_state if k.endswith(".m")} == set(weights) - expected


# ------------------------------------------------------------------------------ the schedule


def test_wsd_warms_up_holds_then_decays_linearly_to_min_lr():
    t = TrainingConfig(schedule="wsd", lr=1.0, min_lr=0.1, warmup_steps=10, decay_fraction=0.2, muon_lr=0.02)
    lr = [lr_at(s, t, 100) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == 1.0  # warmup: lr * (step + 1) / warmup
    assert all(v == 1.0 for v in lr[10:80])  # stable
    assert lr[80] == pytest.approx(1 - 0.9 / 20) and lr[89] == pytest.approx(0.55)  # linear, 20 steps
    assert lr[99] == pytest.approx(0.1)  # the last step runs at min_lr
    assert np.allclose(np.diff(lr[79:]), -0.9 / 20)
    assert muon_lr_at(85, t, 100) == pytest.approx(0.02 * lr[85])
    t.decay_fraction = 0.0
    assert all(lr_at(s, t, 100) == 1.0 for s in range(10, 100))
    t.decay_fraction, t.warmup_steps = 1.0, 0
    assert lr_at(0, t, 10) == pytest.approx(1 - 0.09) and lr_at(9, t, 10) == pytest.approx(0.1)
    t.schedule = "cosine"  # unchanged: half a cosine after warmup, min_lr after the last step
    assert lr_at(0, t, 10) == 1.0 and lr_at(5, t, 10) == pytest.approx(0.55)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"training.optimizer": "sgd"}, "training.optimizer must be one of adamw, muon"),
        ({"training.schedule": "linear"}, "training.schedule must be one of cosine, wsd"),
        ({"training.decay_fraction": "1.5"}, r"training.decay_fraction must be in \[0, 1\]"),
        ({"training.muon_momentum": "1"}, r"training.muon_momentum must be in \[0, 1\)"),
        ({"training.muon_lr": "0"}, "training.muon_lr must be > 0"),
        ({"training.muon_precision": "float16"}, "training.muon_precision must be one of float32, bfloat16"),
        ({"training.optimizer": "muon", "hardware.distributed": "fsdp"}, "muon needs whole matrices"),
    ],
)
def test_bad_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


# ------------------------------------------------------------------------------ one update


@pytest.mark.parametrize("shape", [(48, 32), (32, 80)])  # tall (scaled, transposed) and wide
def test_one_muon_step_matches_the_reference_on_both_backends(shape):
    import mlx.core as mx
    import torch

    from tinyllama.mlx_model.muon import Muon as MlxMuon
    from tinyllama.torch_model.muon import Muon as TorchMuon

    rng = np.random.default_rng(0)
    w, g, buf = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    lr, ratio, momentum, wd = 1e-2, 20.0, 0.9, 0.1  # Muon's rate 0.2: the step is large against the weights
    expected_w, expected_buf = reference_muon(w.astype(np.float64), g, buf, lr * ratio, momentum, wd)
    # the reference really orthogonalises: singular values of the step near 1, unlike the gradient's
    s = np.linalg.svd((w * (1 - lr * ratio * wd) - expected_w) / (lr * ratio * max(1, shape[0] / shape[1]) ** 0.5))[1]
    assert 0.5 < s.min() and s.max() < 1.3 and np.linalg.svd(g)[1].max() > 5

    p = torch.nn.Parameter(torch.from_numpy(w.copy()))
    p.grad = torch.from_numpy(g.copy())
    opt = TorchMuon([p], lr, ratio, momentum, wd)
    opt.state[p]["momentum_buffer"] = torch.from_numpy(buf.copy())
    opt.step()
    mlx_opt = MlxMuon(lr, ratio, momentum, wd)
    mlx_opt.init({"w": mx.array(w)})
    mlx_opt.state["w"]["momentum_buffer"] = mx.array(buf)
    got = mlx_opt.apply_gradients({"w": mx.array(g)}, {"w": mx.array(w)})["w"]
    torch_w, mlx_w = p.detach().numpy(), np.array(got)
    assert np.abs(torch_w - mlx_w).max() < 1e-5  # the twins agree to fp32 rounding
    step = w - expected_w
    for got_w in (torch_w, mlx_w):
        assert np.abs((w - got_w) - step).max() < 1e-4 * np.abs(step).max()
    assert np.allclose(opt.state[p]["momentum_buffer"].numpy(), expected_buf, atol=1e-6)
    assert np.allclose(np.array(mlx_opt.state["w"]["momentum_buffer"]), expected_buf, atol=1e-6)


@pytest.mark.parametrize("shape", [(48, 32), (32, 80)])
def test_a_bf16_newton_schulz_step_stays_close_to_the_fp32_one_on_both_backends(shape):
    """training.muon_precision: bfloat16 iterates in bf16: each backend's step differs from the fp32 reference
    by bf16 rounding (1-5% relative; 1e-5 is float32's contract) but points the same way and is still
    orthogonalised; the weights it returns stay fp32."""
    import mlx.core as mx
    import torch

    from tinyllama.mlx_model.muon import Muon as MlxMuon
    from tinyllama.torch_model.muon import Muon as TorchMuon

    rng = np.random.default_rng(1)
    w, g, buf = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    lr, ratio, momentum, wd = 1e-2, 20.0, 0.9, 0.1
    expected_w, _ = reference_muon(w.astype(np.float64), g, buf, lr * ratio, momentum, wd)
    step = w - expected_w
    p = torch.nn.Parameter(torch.from_numpy(w.copy()))
    p.grad = torch.from_numpy(g.copy())
    opt = TorchMuon([p], lr, ratio, momentum, wd, precision="bfloat16")
    opt.state[p]["momentum_buffer"] = torch.from_numpy(buf.copy())
    opt.step()
    mlx_opt = MlxMuon(lr, ratio, momentum, wd, precision="bfloat16")
    mlx_opt.init({"w": mx.array(w)})
    mlx_opt.state["w"]["momentum_buffer"] = mx.array(buf)
    got = mlx_opt.apply_gradients({"w": mx.array(g)}, {"w": mx.array(w)})["w"]
    assert p.dtype == torch.float32 and got.dtype == mx.float32
    for got_w in (p.detach().numpy(), np.array(got)):
        got_step = w - got_w
        error = np.linalg.norm(got_step - step) / np.linalg.norm(step)
        cosine = (got_step * step).sum() / np.linalg.norm(got_step) / np.linalg.norm(step)
        s = np.linalg.svd((w * (1 - lr * ratio * wd) - got_w) / (lr * ratio * max(1, shape[0] / shape[1]) ** 0.5))[1]
        assert error > 1e-4  # bf16 rounding shows: bf16 ran
        assert cosine > 0.998 and 0.5 < s.min() and s.max() < 1.3  # the same direction, still orthogonalised


@pytest.mark.parametrize(
    "machine, capabilities, slow",
    [
        ("x86_64", {"avx2": True, "avx512_bf16": False, "amx_bf16": False}, True),  # e.g. an AVX2 AMD EPYC
        ("x86_64", {"avx2": True, "avx512_bf16": False, "amx_bf16": True}, False),  # a Xeon with AMX
        ("x86_64", {"avx2": True, "avx512_bf16": True, "amx_bf16": False}, False),
        ("x86_64", {}, False),  # torch too old to say: no claim
        ("arm64", {"avx512_bf16": False}, False),  # not x86: no claim
    ],
)
def test_a_cpu_without_bf16_matmuls_hears_to_keep_fp32_newton_schulz(monkeypatch, capsys, machine, capabilities, slow):
    """bf16 Newton-Schulz ran ~20x slower than fp32 on an AVX2-only CPU: train_cuda.py says so in
    one warning line (dry run included) naming the setting to change; a CPU with AMX / AVX512-BF16 hears nothing."""
    import platform

    import torch

    from tinyllama import train_cuda
    from tinyllama.torch_model.muon import slow_bf16_matmul

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert slow_bf16_matmul(torch.device("cpu")) is slow
    assert slow_bf16_matmul(torch.device("meta")) is False  # only a CPU is judged
    argv = ["--config", str(ROOT / "config.yaml"), "--dry-run", "--hardware.accelerator", "cpu"]
    train_cuda.main([*argv, "--training.optimizer", "muon", "--training.muon_precision", "bfloat16"])
    out = capsys.readouterr().out
    assert ("warning: this CPU" in out and "training.muon_precision float32" in out) is slow
    train_cuda.main([*argv, "--training.optimizer", "muon"])  # float32: never warned
    assert "warning: this CPU" not in capsys.readouterr().out


def test_mlx_on_a_cpu_is_told_to_keep_fp32_newton_schulz(capsys, monkeypatch):
    """MLX's CPU backend computes bf16 matmuls without BLAS (~14x fp32's time for the Newton-Schulz iterations
    on a 2-core EPYC): train_mlx.py on the CPU warns once, naming the setting; fp32, or bf16 on a GPU, is not."""
    import mlx.core as mx

    from tinyllama import train_mlx

    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.cpu))  # Linux's only device; a Mac's other one
    argv = ["--config", str(ROOT / "config.yaml"), "--dry-run", "--training.optimizer", "muon"]
    train_mlx.main([*argv, "--training.muon_precision", "bfloat16"])
    out = capsys.readouterr().out
    assert "warning: MLX's CPU backend" in out and "training.muon_precision float32" in out
    train_mlx.main(argv)
    assert "warning" not in capsys.readouterr().out
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))  # Apple's GPU: bf16 is native
    train_mlx.main([*argv, "--training.muon_precision", "bfloat16"])
    assert "warning" not in capsys.readouterr().out


def test_training_steps_equal_on_both_backends():
    """Three full steps of the trainers' own code (MLX's compiled step; torch's clip + optimizer) from the same
    weights and batches: weights and neutral optimizer state agree to fp32 rounding."""
    import mlx.core as mx
    import torch
    from mlx.utils import tree_map

    from tinyllama import train_mlx
    from tinyllama.mlx_model.optim import load_optimizer_state
    from tinyllama.mlx_model.optim import make_optimizer as mlx_optimizer
    from tinyllama.mlx_model.optim import optimizer_state as mlx_state
    from tinyllama.mlx_model.state import build_model as mlx_model
    from tinyllama.mlx_model.state import model_state as mlx_weights
    from tinyllama.torch_model.optim import make_optimizer as torch_optimizer
    from tinyllama.torch_model.optim import optimizer_state as torch_state
    from tinyllama.torch_model.state import build_model as torch_model
    from tinyllama.torch_model.state import model_state as torch_weights

    cfg = Config(model=TINY_MODELS["mha4-untied"])
    cfg.training = TrainingConfig(optimizer="muon", weight_decay=0.1, muon_weight_decay=0.05, grad_clip=1.0)
    weights = random_weights(cfg.model)
    tm = torch_model(cfg.model, weights, device=torch.device("cpu"))
    topt = torch_optimizer(tm, cfg.training)
    mm = mlx_model(cfg.model, weights, dtype="float32")
    mopt = mlx_optimizer(cfg.training, cfg.model)
    load_optimizer_state(mopt, mm, None, 0)
    _, mlx_step = train_mlx.build_step(mm, mopt, cfg, 1)
    for i, lr in enumerate((1e-3, 2e-3, 3e-3)):
        x, y = tokens_for(cfg.model, 2, 16, seed=i), tokens_for(cfg.model, 2, 16, seed=10 + i)
        for group in topt.param_groups:
            group["lr"] = lr
        tm(torch.from_numpy(x), targets=torch.from_numpy(y)).backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
        topt.step()
        topt.zero_grad()
        zeros = tree_map(mx.zeros_like, mm.trainable_parameters())
        mlx_step(zeros, mx.array(lr, dtype=mx.float32), mx.array(x), mx.array(y), mx.array(float(y.size)))
        mx.eval(mm.state, mopt.state)
    a, b = torch_weights(tm), mlx_weights(mm)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5
    # Muon moved the block matrices
    assert max(float(np.abs(a[k] - weights[k]).max()) for k in a if k.endswith("_proj.weight")) > 1e-3
    sa, sb = torch_state(tm, topt), mlx_state(mopt)
    assert sorted(sa) == sorted(sb) == sorted(moment_shapes(cfg.model, "muon"))
    assert max(float(np.abs(sa[k] - sb[k]).max()) for k in sa) < 1e-5
    assert all(sa[k].any() for k in sa)  # every weight was stepped


# ------------------------------------------------------------------------------ optimizer state on disk


def test_a_resume_with_the_other_optimizer_is_refused(tmp_path):
    from helpers import make_checkpoint

    from tinyllama.core.checkpoint import save_safetensors
    from tinyllama.core.model_files import load_optimizer

    cfg = TINY_MODELS["gqa8x2-tied"]
    ckpt = make_checkpoint(tmp_path, cfg)
    for saved, other in (("muon", "adamw"), ("adamw", "muon")):
        moments = {k: np.zeros(s, np.float32) for k, s in moment_shapes(cfg, saved).items()}
        save_safetensors(moments, ckpt / "optimizer.safetensors")
        assert sorted(load_optimizer(ckpt, cfg, saved)) == sorted(moments)
        with pytest.raises(UserError, match=f"holds {saved} state but training.optimizer is {other}"):
            load_optimizer(ckpt, cfg, other)


# ------------------------------------------------------------------------------ trainers end to end

ARGS = ("--training.max_steps", "20", "--training.eval_every", "0", "--training.save_every", "10",
        "--training.optimizer", "muon", "--training.schedule", "wsd", "--training.decay_fraction", "0.3",
        "--training.muon_weight_decay", "0.01")  # fmt: skip


def train(backend: str, run_dir, cache, *extra: str) -> None:
    from tinyllama import train_cuda, train_mlx

    if backend == "torch":
        train_cuda.main(smoke_argv(run_dir, cache, "--hardware.accelerator", "cpu", *ARGS, *extra))
    else:
        train_mlx.main(smoke_argv(run_dir, cache, *ARGS, *extra))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_cache):
    root = tmp_path_factory.mktemp("muon-straight")
    for backend in ("mlx", "torch"):
        train(backend, root / backend, data_cache)
    return root


@pytest.mark.slow
def test_backends_track_each_other_for_20_steps(straight):
    a, b = train_losses(straight / "mlx"), train_losses(straight / "torch")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert all(abs(a[s] - b[s]) <= 1e-4 * a[s] for s in a), (a, b)
    assert np.mean([a[s] for s in (18, 19, 20)]) < np.mean([a[s] for s in (1, 2, 3)]) - 0.5  # it learns
    assert max_weight_diff(straight / "mlx/ckpt/final.ckpt", straight / "torch/ckpt/final.ckpt") < 1e-4
    from tinyllama.core.model_files import load_optimizer, read_model_config

    for backend in ("mlx", "torch"):  # both write the neutral format: momentum buffers + AdamW moments
        final = straight / backend / "ckpt" / "final.ckpt"
        cfg = read_model_config(final)
        assert sorted(load_optimizer(final, cfg, "muon")) == sorted(moment_shapes(cfg, "muon"))


@pytest.mark.slow
@pytest.mark.parametrize("first, second", [("mlx", "mlx"), ("torch", "torch"), ("mlx", "torch"), ("torch", "mlx")])
def test_resume_matches_the_straight_run(straight, tmp_path, data_cache, first, second):
    train(second, tmp_path, data_cache, "--resume", str(straight / first / "ckpt" / "step-000010.ckpt"))
    reference, resumed = train_losses(straight / first), train_losses(tmp_path)
    assert sorted(resumed) == list(range(11, 21))
    exact = first == second
    for step in resumed:
        assert abs(resumed[step] - reference[step]) <= (1e-6 if exact else 1e-5) * reference[step], (step, resumed)
    diff = max_weight_diff(straight / first / "ckpt" / "final.ckpt", tmp_path / "ckpt" / "final.ckpt")
    assert diff < (1e-6 if exact else 1e-4)


@pytest.mark.slow
def test_resuming_muon_state_with_adamw_is_refused(straight, tmp_path, data_cache):
    from tinyllama import train_cuda

    halfway = straight / "mlx" / "ckpt" / "step-000010.ckpt"
    argv = smoke_argv(tmp_path, data_cache, "--hardware.accelerator", "cpu", "--resume", str(halfway))
    with pytest.raises(UserError, match="holds muon state but training.optimizer is adamw"):  # a resume keeps muon
        train_cuda.main([*argv, "--training.optimizer", "adamw", "--training.max_steps", "20"])  # unless told


@pytest.mark.slow
def test_torchrun_ddp_with_muon_matches_one_process(straight, tmp_path, data_cache):
    """Under DDP every rank orthogonalises the same all-reduced gradient: two processes of half the batch
    follow the single-process run."""
    import os
    import subprocess
    import sys

    from helpers import ROOT

    short = ("--training.max_steps", "6", "--training.save_every", "0")
    argv = smoke_argv(tmp_path, data_cache, "--hardware.accelerator", "cpu", *ARGS, *short,
                      "--training.batch_size", "4", "--hardware.distributed", "ddp")  # fmt: skip
    single = tmp_path / "single"
    train("torch", single, data_cache, *short)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train_cuda.py"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([*cmd, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    a, b = train_losses(single), train_losses(tmp_path)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(a[s] - b[s]) < 1e-4 for s in a), (a, b)
    assert max_weight_diff(single / "ckpt/final.ckpt", tmp_path / "ckpt/final.ckpt") < 1e-4


def test_a_skipped_muon_step_leaves_no_trace_in_the_compiled_mlx_step():
    """on_nonfinite skip puts the optimizer state back in place: the compiled step holds the state dicts
    themselves, so the next steps must run as if the rejected one had never happened."""
    clean, restored = _mlx_after_two_steps(reject_first=False), _mlx_after_two_steps(reject_first=True)
    for a, b in zip(clean, restored, strict=True):
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _mlx_after_two_steps(reject_first: bool) -> tuple[dict, dict]:
    import mlx.core as mx
    from mlx.utils import tree_map

    from tinyllama import train_mlx
    from tinyllama.mlx_model.optim import load_optimizer_state, make_optimizer, optimizer_state, restore_state
    from tinyllama.mlx_model.state import build_model, model_state

    cfg = Config(model=TINY_MODELS["gqa8x2-tied"])
    cfg.training = TrainingConfig(optimizer="muon", grad_clip=0.0)
    x, y = tokens_for(cfg.model, 2, 16, seed=1), tokens_for(cfg.model, 2, 16, seed=2)
    model = build_model(cfg.model, random_weights(cfg.model), dtype="float32")
    optimizer = make_optimizer(cfg.training, cfg.model)
    load_optimizer_state(optimizer, model, None, 0)
    _, step = train_mlx.build_step(model, optimizer, cfg, 1)

    def run(lr: float) -> None:
        acc = tree_map(mx.zeros_like, model.trainable_parameters())
        step(acc, mx.array(lr), mx.array(x), mx.array(y), mx.array(float(y.size)))
        mx.eval(model.state, optimizer.state)

    if reject_first:  # what train_mlx.py does with a non-finite step under on_nonfinite: skip
        before = (model.parameters(), tree_map(lambda a: a, optimizer.state))
        run(1e30)
        assert all(v.any() for v in optimizer_state(optimizer).values())  # the rejected step filled them
        model.update(before[0])
        restore_state(optimizer, before[1])
    run(1e-3)
    run(1e-3)
    return model_state(model), optimizer_state(optimizer)
