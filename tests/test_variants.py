"""Each architecture switch (model.qk_norm, ...) trains alike on both backends: MLX = torch losses step by step,
a checkpoint resumes exactly on the other backend, Muon and --dry-run follow the declaration, and greedy
generation gives the same tokens on both."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from helpers import max_weight_diff, smoke_argv, train_losses

from tinyllama import train_cuda, train_mlx
from tinyllama.core.architecture import count_parameters, moment_shapes
from tinyllama.core.model_files import load_optimizer, load_weights, read_model_config

VARIANTS = {  # name -> the config keys it sets
    "qk_norm": {"model.qk_norm": True},
    "relu2": {"model.mlp": "relu2"},
    "logit_softcap": {"model.logit_softcap": 3.0},  # bends the smoke model's logits (up to ~2.3 raw) by step 20
    "z_loss": {"training.z_loss": 0.01},  # log Z starts near ln(512) = 6.2: a visible share of the loss
}
ARGS = ("--training.max_steps", "20", "--training.eval_every", "0", "--training.save_every", "10")

pytestmark = pytest.mark.slow  # each test trains end to end


def switches(variant: str) -> list[str]:
    return [arg for key, value in VARIANTS[variant].items() for arg in (f"--{key}", str(value).lower())]


def train(backend: str, run_dir, cache, *extra: str) -> None:
    if backend == "torch":
        train_cuda.main(smoke_argv(run_dir, cache, "--hardware.accelerator", "cpu", *ARGS, *extra))
    else:
        train_mlx.main(smoke_argv(run_dir, cache, *ARGS, *extra))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def straight(request, tmp_path_factory, data_cache):
    """Both backends' 20-step runs of one variant: (variant, root holding mlx/ and torch/)."""
    root = tmp_path_factory.mktemp(f"variant-{request.param}")
    for backend in ("mlx", "torch"):
        train(backend, root / backend, data_cache, *switches(request.param))
    return request.param, root


def test_both_backends_take_the_same_steps(straight):
    variant, root = straight
    a, b = train_losses(root / "mlx"), train_losses(root / "torch")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert all(abs(a[s] - b[s]) <= 1e-5 * a[s] for s in a), (variant, a, b)
    assert np.mean([a[s] for s in (18, 19, 20)]) < np.mean([a[s] for s in (1, 2, 3)]) - 0.5  # it learns
    assert max_weight_diff(root / "mlx/ckpt/final.ckpt", root / "torch/ckpt/final.ckpt") < 1e-4
    final = root / "torch/ckpt/final.ckpt"
    saved = {"model": vars(read_model_config(final)), **yaml.safe_load((final / "train_config.yaml").read_text())}
    for key, value in VARIANTS[variant].items():  # the switch is in the checkpoint (config.json for the model's)
        section, _, name = key.partition(".")
        assert saved[section][name] == value, key


@pytest.mark.parametrize("first, second", [("mlx", "torch"), ("torch", "mlx")])
def test_a_checkpoint_resumes_exactly_on_the_other_backend(straight, tmp_path, data_cache, first, second):
    variant, root = straight
    train(second, tmp_path, data_cache, "--resume", str(root / first / "ckpt" / "step-000010.ckpt"))
    reference, resumed = train_losses(root / first), train_losses(tmp_path)
    assert sorted(resumed) == list(range(11, 21))
    assert all(abs(resumed[s] - reference[s]) <= 1e-5 * reference[s] for s in resumed), (variant, resumed)
    assert max_weight_diff(root / first / "ckpt" / "final.ckpt", tmp_path / "ckpt" / "final.ckpt") < 1e-4


def test_greedy_generation_is_the_same_on_both_backends(straight):
    from tinyllama.mlx_model.generate import load_backend as mlx_backend
    from tinyllama.torch_model.generate import load_backend as torch_backend

    _, root = straight
    final = root / "torch/ckpt/final.ckpt"
    prompt = [5, 17, 3, 42, 8, 11]
    ours, theirs = torch_backend(final, device="cpu"), mlx_backend(final)
    assert list(ours.generate(prompt, 24)) == list(theirs.generate(prompt, 24))


def test_muon_and_dry_run_follow_the_declaration(straight, tmp_path, data_cache, capsys):
    variant, _ = straight
    train("torch", tmp_path, data_cache, *switches(variant), "--training.optimizer", "muon",
          "--training.max_steps", "3")  # fmt: skip
    final = tmp_path / "ckpt/final.ckpt"
    cfg = read_model_config(final)
    assert sorted(load_optimizer(final, cfg, "muon")) == sorted(moment_shapes(cfg, "muon"))
    capsys.readouterr()
    train("torch", tmp_path / "dry", data_cache, *switches(variant), "--dry-run")
    shown = re.search(r"model: ([\d.]+)([kM]?) parameters", capsys.readouterr().out)
    built = sum(value.size for value in load_weights(final).values())  # what the trainer really built
    assert count_parameters(cfg) == built
    assert float(shown.group(1)) * {"": 1, "k": 1e3, "M": 1e6}[shown.group(2)] == pytest.approx(built, rel=0.01)
