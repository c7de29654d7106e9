"""One vocabulary across the commands: every dtype spelling on every --dtype, mlx_lm's option names,
`-p -` from stdin, --min-p, evaluate's --hit-k (and its older --top-k), bare boolean overrides, and a
config reference generated from the dataclasses."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ROOT, make_checkpoint, run_infer

from tinyllama import evaluate_checkpoints, infer
from tinyllama.convert.__main__ import _parser as convert_parser
from tinyllama.core.cli import run_cli
from tinyllama.core.config import ConfigError, ModelConfig, load_config, parse_overrides
from tinyllama.core.config_help import keys, override_help, reference_markdown
from tinyllama.core.sampling import SamplingParams, min_p_filter, select_token

SPELLINGS = {
    "float32": ["float32", "fp32", "f32", "FP32"],
    "bfloat16": ["bfloat16", "bf16", "BF16"],
    "float16": ["float16", "fp16", "f16"],
}
GGUF = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def exit_and_err(parse, capsys) -> tuple[int, str]:
    try:
        run_cli(parse)
    except SystemExit as exc:
        return exc.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


def commands_with_dtype(spelling: str) -> dict[str, object]:
    """Each command's --dtype, parsed the way its main() parses it."""
    c = convert_parser()
    return {
        "infer": lambda: infer.parse_args(["--ckpt", "m", "--dtype", spelling]).dtype,
        "evaluate": lambda: evaluate_checkpoints.parse_args(["--checkpoints", "m", "--dtype", spelling]).dtype,
        "export-hf": lambda: c.parse_args(["export-hf", "m", "o", "--dtype", spelling]).dtype,
        "export-mlx": lambda: c.parse_args(["export-mlx", "m", "o", "--dtype", spelling]).dtype,
        "export-gguf": lambda: c.parse_args(["export-gguf", "m", "o.gguf", "--dtype", spelling]).dtype,
        "import": lambda: c.parse_args(["import", "m", "o", "--dtype", spelling]).dtype,
    }


@pytest.mark.parametrize("canonical", sorted(SPELLINGS))
def test_every_command_takes_every_dtype_spelling_and_keeps_one_name(canonical):
    for spelling in SPELLINGS[canonical]:
        for command, parse in commands_with_dtype(spelling).items():
            if command == "import" and canonical == "float16":
                continue  # import keeps float32 or bfloat16 (auto); float16 is no training dtype
            expected = GGUF[canonical] if command == "export-gguf" else canonical
            assert parse() == expected, (command, spelling)


@pytest.mark.parametrize("command", ["infer", "evaluate", "export-hf", "export-mlx", "export-gguf", "import"])
def test_an_unknown_dtype_is_one_line_naming_the_choices(command, capsys):
    code, err = exit_and_err(commands_with_dtype("fp8")[command], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "'fp8'" in err and ("bfloat16|bf16" in err or "bf16" in err), err


def test_infer_takes_mlx_lm_names():
    args = infer.parse_args(
        ["--model", "m", "--max-tokens", "7", "--temp", "0.3", "-p", "a", "-p", "b", "--min-p", "0.1"]
    )
    assert (args.ckpt, args.max_new_tokens, args.temperature, args.prompt, args.min_p) == ("m", 7, 0.3, ["a", "b"], 0.1)


def test_evaluate_takes_model_and_hit_k_and_still_the_older_top_k():
    assert evaluate_checkpoints.parse_args(["--model", "a", "b", "--hit-k", "3"]).checkpoints == ["a", "b"]
    assert evaluate_checkpoints.parse_args(["--model", "a", "--hit-k", "3"]).hit_k == 3
    assert evaluate_checkpoints.parse_args(["--checkpoints", "a", "--top-k", "4"]).hit_k == 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = ModelConfig(vocab_size=300, n_layers=1, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)
    return make_checkpoint(tmp_path_factory.mktemp("vocab"), cfg)  # its BPE tokenizer has 300 tokens


def test_prompt_dash_reads_stdin_as_one_prompt_and_equals_the_same_prompt_given_inline(ckpt, capsys, monkeypatch):
    common = ["--model", str(ckpt), "--backend", "torch", "--temp", "0", "--max-tokens", "6", "--dtype", "bf16"]
    code, piped, err = run_infer([*common, "-p", "-"], capsys, monkeypatch, stdin="hello world\n")
    assert code == 0, err
    code, inline, err = run_infer([*common, "-p", "hello world"], capsys, monkeypatch)
    assert code == 0, err
    assert piped == inline and piped.startswith("hello world") and len(piped) > len("hello world\n")
    code, _, err = run_infer([*common, "-p", "-"], capsys, monkeypatch, stdin="  \n")
    assert code == 2 and "empty standard input" in err


def test_min_p_keeps_exactly_the_tokens_transformers_keeps():
    import torch
    from transformers import MinPLogitsWarper

    rng = np.random.default_rng(0)
    for min_p in (0.01, 0.1, 0.5):
        logits = (rng.standard_normal(200) * 3).astype(np.float32)
        ours = np.isfinite(min_p_filter(logits, min_p))
        theirs = MinPLogitsWarper(min_p)(None, torch.from_numpy(logits)[None])[0].isfinite().numpy()
        assert (ours == theirs).all() and 1 <= ours.sum() < 200
    peaked = np.array([5.0, 4.0, 0.0, -3.0], dtype=np.float32)
    params = SamplingParams(temperature=1.0, min_p=0.3)  # keeps tokens 0 and 1 only (e^-1 = 0.37 >= 0.3)
    draws = {select_token(peaked, params, np.random.default_rng(s)) for s in range(200)}
    assert draws == {0, 1}
    with pytest.raises(ValueError, match="min_p"):
        SamplingParams(min_p=1.0)


def test_a_bare_boolean_override_means_true_and_a_bare_other_key_is_refused():
    assert parse_overrides(["--training.compile", "--training.lr", "3e-4"]) == {
        "training.compile": "true",
        "training.lr": "3e-4",
    }
    assert parse_overrides(["--output.overwrite"]) == {"output.overwrite": "true"}
    cfg = load_config(None, parse_overrides(["--training.compile", "--data.streaming"]))
    assert cfg.training.compile is True and cfg.data.streaming is True
    assert parse_overrides(["--training.compile", "false"]) == {"training.compile": "false"}
    with pytest.raises(ConfigError, match="--training.lr needs a value"):
        parse_overrides(["--training.lr", "--training.compile"])


def test_training_dtype_takes_the_short_spellings():
    for spelling, name in [("bf16", "bfloat16"), ("fp32", "float32"), ("f32", "float32")]:
        assert load_config(None, {"training.dtype": spelling}).training.dtype == name


def test_every_config_key_is_explained_in_help_and_in_the_docs():
    rows = keys()
    assert len(rows) > 50 and all(meaning for *_, meaning in rows)
    text = override_help()
    for _, key, kind, default, _ in rows:
        assert f"--{key} {kind}" in text and f"[{default}]" in text
    for key in ("training.max_tokens", "training.sample_tokens", "data.encoding_errors", "output.report_to"):
        assert f"--{key} " in text
    docs = (ROOT / "docs" / "configuration.md").read_text()
    assert reference_markdown() in docs, (
        "docs/configuration.md is stale: python -m tinyllama.core.config_help docs/configuration.md"
    )


def test_train_help_is_grouped_by_section_with_types_and_defaults(capsys):
    from tinyllama import train

    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = capsys.readouterr().out
    assert "\ntraining:\n" in out and "\nmodel:\n" in out
    assert "--training.lr FLOAT" in out and "[0.001]" in out and "--output.report_to none|tensorboard|wandb" in out
