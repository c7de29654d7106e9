"""Config: defaults < YAML < typed CLI overrides, invariants checked once, HF mapping both ways."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import ROOT, TINY_MODELS

from tinyllama.core.architecture import count_parameters
from tinyllama.core.config import Config, ConfigError, load_config, parse_overrides, save_config
from tinyllama.core.hf_config import from_hf_config, to_hf_config


def test_precedence_defaults_then_yaml_then_cli(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {n_layers: 3}\ntraining: {lr: 0.002, seq_len: 128}\n")
    cfg = load_config(path, parse_overrides(["--training.lr", "3e-4", "--model.d_model=192"]))
    assert cfg.model.n_layers == 3  # YAML over default
    assert cfg.training.lr == 3e-4  # CLI over YAML
    assert cfg.model.d_model == 192
    assert cfg.training.seq_len == 128
    assert cfg.training.batch_size == Config().training.batch_size  # default kept
    assert cfg.output.run_name == "run"  # named after the file


def test_overrides_are_typed():
    cfg = load_config(
        None,
        parse_overrides(
            [
                "--model.n_layers",
                "4",
                "--model.tie_embeddings",
                "false",
                "--training.betas",
                "0.8,0.99",
                "--training.max_tokens",
                "1e6",
                "--hardware.accelerator",
                "gpu",
                "--training.dtype",
                "bf16",
            ]
        ),
    )
    assert cfg.model.n_layers == 4 and isinstance(cfg.model.n_layers, int)
    assert cfg.model.tie_embeddings is False
    assert cfg.training.betas == (0.8, 0.99)
    assert cfg.training.max_tokens == 1_000_000
    assert cfg.hardware.accelerator == "cuda"  # `gpu` still works
    assert cfg.training.dtype == "bfloat16"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.n_head": 4}, "unknown config key 'model.n_head' (did you mean 'model.n_heads'?)"),
        ({"modle.n_heads": 4}, "unknown config section 'modle' (did you mean 'model'?)"),
        ({"model.n_layers": "six"}, "model.n_layers: expected int, got 'six'"),
        ({"model.n_layers": 2.5}, "model.n_layers: expected int"),
        ({"model.d_model": 100, "model.n_heads": 6}, "model.d_model (100) must be divisible by model.n_heads (6)"),
        ({"model.n_heads": 6, "model.n_kv_heads": 4, "model.d_model": 384}, "must be a multiple of model.n_kv_heads"),
        ({"model.d_model": 60, "model.n_heads": 4, "model.n_kv_heads": 2}, "head dim (15) must be even"),
        ({"training.seq_len": 2048}, "training.seq_len (2048) exceeds model.max_seq_len (1024)"),
        ({"model.n_layers": 0}, "model.n_layers must be a positive integer, got 0"),
        ({"model.vocab_size": -5}, "model.vocab_size must be a positive integer"),
        ({"training.batch_size": 0}, "training.batch_size must be a positive integer"),
        ({"training.min_lr": 1.0}, "training.min_lr (1.0) must be between 0 and training.lr"),
        ({"training.max_steps": 0}, "set training.max_steps or training.max_tokens"),
        ({"training.betas": "0.9"}, "training.betas: expected 2 comma-separated numbers"),
        ({"training.dtype": "float8"}, "training.dtype must be one of float32, bfloat16"),
        ({"hardware.accelerator": "tpu"}, "hardware.accelerator must be one of auto, mlx, cuda, mps, cpu"),
        ({"data.val_fraction": 0}, "data.val_fraction must be in (0, 1)"),
    ],
)
def test_invariants_fail_with_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layers: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listy)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="overrides look like"):
        parse_overrides(["lr", "3"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--training.lr"])
    with pytest.raises(ConfigError, match="did you mean 'training.lr'"):
        parse_overrides(["--training.lrr", "1"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs" / "smoke.yaml", {"training.lr": 0.01})
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again.to_dict() == cfg.to_dict()


SHIPPED = ["config.yaml", *(f"configs/{name}.yaml" for name in ("smoke", "gpt2-124m", "speedrun", "sprint"))]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_valid(name):
    load_config(ROOT / name)


@pytest.mark.slow  # two fresh processes
def test_a_bundled_config_by_name_is_found_and_said_once(tmp_path):
    """`python train.py --config smoke` from a directory without it: train.py finds the bundled file, says so once,
    and hands the trainer it execs that file (the trainer said it a second time)."""
    import subprocess
    import sys

    from tinyllama.train import with_config

    assert with_config(["--config=smoke", "--dry-run"], Path("/x/smoke.yaml")) == [
        "--config",
        "/x/smoke.yaml",
        "--dry-run",
    ]
    argv = [sys.executable, str(ROOT / "train.py"), "--config", "smoke", "--dry-run"]
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("config: smoke is not here; using the bundled") == 1, run.stderr
    assert "-> " in run.stderr and "train_cuda.py --config" in run.stderr and "memory estimate" in run.stdout


def test_shipped_model_sizes():
    assert 10e6 <= count_parameters(load_config(ROOT / "config.yaml").model) <= 30e6
    assert 120e6 <= count_parameters(load_config(ROOT / "configs/gpt2-124m.yaml").model) <= 130e6


def test_hf_config_round_trip(tiny_model_cfg):
    hf = to_hf_config(tiny_model_cfg, bos_token_id=0, eos_token_id=1)
    assert hf["head_dim"] == tiny_model_cfg.resolved_head_dim
    assert from_hf_config(hf) == tiny_model_cfg


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "mistral"}, "unsupported model_type 'mistral'"),
        ({"attention_bias": True}, "no attention biases"),
        ({"mlp_bias": True}, "no MLP biases"),
        ({"hidden_act": "gelu"}, "activations other than silu"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "unsupported RoPE scaling 'llama3'"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "unsupported RoPE scaling 'yarn'"),
    ],
)
def test_unsupported_hf_features_are_refused(change, message):
    hf = to_hf_config(TINY_MODELS["gqa8x2-tied"]) | change
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_hf_config(hf)


def test_hf_import_prefers_rope_parameters_over_top_level():
    hf = to_hf_config(TINY_MODELS["gqa8x2-tied"])
    hf["rope_theta"] = 10000.0
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    assert from_hf_config(hf).rope_theta == 500000.0
    del hf["rope_parameters"]
    assert from_hf_config(hf).rope_theta == 10000.0
    del hf["tie_word_embeddings"]
    assert from_hf_config(hf).tie_embeddings is False  # transformers' own default


def test_config_dataclasses_have_no_framework_imports():
    import subprocess
    import sys

    code = (
        "import sys, core.config, core.hf_config, core.checkpoint, core.architecture, core.dtypes; "
        "print('torch' in sys.modules, 'mlx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_core_imports_nothing_from_data():
    """Dependencies point one way (docs/ARCHITECTURE.md): data/ uses core/, never the reverse, at module level
    or inside a function. Imports under `if TYPE_CHECKING:` only name types and never run."""
    import ast

    def type_checking(node: ast.AST) -> bool:
        return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)

    def imports(node: ast.AST, guarded: bool = False):
        for child in ast.iter_child_nodes(node):
            inside = guarded or type_checking(child)
            if isinstance(child, ast.Import) and not inside:
                yield from (alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and not inside:
                yield from ((child.module or "") + "." + alias.name for alias in child.names)
            elif isinstance(child, ast.Call) and ast.unparse(child.func).endswith(("import_module", "__import__")):
                yield from (arg.value for arg in child.args if isinstance(arg, ast.Constant))
            yield from imports(child, inside)

    found = {
        f"core/{path.name}: {name}"
        for path in sorted((ROOT / "core").glob("*.py"))
        for name in imports(ast.parse(path.read_text()))
        if str(name).removeprefix("tinyllama.").split(".")[0] == "data"
    }
    assert not found, found


def test_dataclass_field_sections_match_design():
    assert [f.name for f in dataclasses.fields(Config)] == ["model", "training", "data", "hardware", "output"]
