"""A checkpoint written by one trainer resumes in the other: same weights, moments, step, lr, data."""

from __future__ import annotations

import pytest
from helpers import max_weight_diff, smoke_argv, train_losses

from tinyllama import train_cuda, train_mlx

ARGS = ("--training.max_steps", "40", "--training.eval_every", "0", "--training.save_every", "20")


pytestmark = pytest.mark.slow  # each test trains end to end


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, data_cache):
    root = tmp_path_factory.mktemp("straight")
    train_mlx.main(smoke_argv(root / "mlx", data_cache, *ARGS))
    train_cuda.main(smoke_argv(root / "torch", data_cache, "--hardware.accelerator", "cpu", *ARGS))
    return root


@pytest.mark.parametrize("first, second", [("mlx", "torch"), ("torch", "mlx")])
def test_resume_on_the_other_backend(straight_runs, tmp_path, data_cache, first, second):
    halfway = straight_runs / first / "ckpt" / "step-000020.ckpt"
    argv = smoke_argv(tmp_path, data_cache, *ARGS, "--resume", str(halfway))
    if second == "torch":
        train_cuda.main([*argv, "--hardware.accelerator", "cpu"])
    else:
        train_mlx.main(argv)
    reference, resumed = train_losses(straight_runs / first), train_losses(tmp_path)
    assert sorted(resumed) == list(range(21, 41))
    for step in resumed:
        assert abs(resumed[step] - reference[step]) <= 1e-3 * abs(reference[step]), (step, reference, resumed)
    assert max_weight_diff(straight_runs / first / "ckpt" / "final.ckpt", tmp_path / "ckpt" / "final.ckpt") < 2e-3
