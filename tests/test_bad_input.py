"""The bad-input matrix: hostile or mistaken input to every command is one `error:` line naming the offending
file or key, exit code 2, no traceback, and no file that existed before is changed.

docs/errors.md lists every case with its message; `python tests/test_bad_input.py` rewrites it."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

if __name__ == "__main__":  # run as a script to rewrite docs/errors.md: the repo root must be importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import ROOT, file_hashes, smoke_argv, write_word_tokenizer
from safetensors.numpy import save_file

from tinyllama import evaluate_checkpoints, infer, train, train_cuda, train_mlx
from tinyllama.convert.__main__ import main as convert_main
from tinyllama.core.cli import run_cli
from tinyllama.core.model_files import load_optimizer, load_weights
from tinyllama.data.prepare import main as prepare_main

DOC = ROOT / "docs" / "errors.md"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def torch_train(argv):
    return train_cuda.main([*argv, "--hardware.accelerator", "cpu"] if "--hardware.accelerator" not in argv else argv)


def prepare(argv):
    code = prepare_main(argv)
    if code:
        raise SystemExit(code)


COMMANDS = {
    "train.py": train.main,
    "train_cuda.py": torch_train,
    "train_mlx.py": train_mlx.main,
    "infer.py": infer.main,
    "evaluate_checkpoints.py": evaluate_checkpoints.main,
    "python -m convert": convert_main,
    "python -m data.prepare": prepare,
}

# (id, command, argv with {placeholders} from the sandbox, what the one line must say; it must also name the
# offending key or file, which is the part in `named`)
CASES = [
    # ---------------------------------------------------------------- config (train.py fails before it execs)
    ("config-missing", "train.py", "--config {s}/nothing.yaml", "config file not found", "nothing.yaml"),
    ("config-not-yaml", "train.py", "--config {s}/broken.yaml", "not valid YAML at line", "broken.yaml"),
    ("config-a-list", "train.py", "--config {s}/list.yaml", "expected a mapping of sections", "list.yaml"),
    ("config-binary", "train.py", "--config {s}/image.txt", "is not UTF-8 text", "image.txt"),
    ("config-type", "train.py", "--config {smoke} --training.lr fast", "expected float", "training.lr"),
    ("config-inf-lr", "train.py", "--config {smoke} --training.lr inf", "must be a finite number", "training.lr"),
    ("config-section-typo", "train.py", "--config {smoke} --trainig.lr 1", "did you mean 'training'", "trainig"),
    ("config-key-typo", "train.py", "--config {smoke} --training.lrr 1", "did you mean", "training.lrr"),
    ("config-heads", "train.py", "--config {smoke} --model.d_model 65", "must be divisible", "model.d_model"),
    ("config-seq-len", "train.py", "--config {smoke} --training.seq_len 4096", "exceeds", "training.seq_len"),
    ("config-choice", "train.py", "--config {smoke} --hardware.accelerator tpu", "must be one of", "accelerator"),
    ("config-run-name", "train.py", "--config {smoke} --output.run_name ../x", "plain name", "output.run_name"),
    ("config-no-value", "train.py", "--config {smoke} --training.lr", "needs a value", "training.lr"),
    ("config-stray-arg", "train.py", "--config {smoke} stray", "unexpected argument", "stray"),
    ("config-betas", "train_cuda.py", "{train} --training.betas 0.9", "expected 2 comma-separated", "betas"),
    ("config-positions", "train_cuda.py", "{train} --model.max_seq_len 1e10", "positions supported", "max_seq_len"),
    ("config-no-steps", "train_cuda.py", "{train} --training.max_steps 0", "set training.max_steps", "max_steps"),
    ("config-min-lr", "train_cuda.py", "{train} --training.min_lr 1", "must be between 0", "training.min_lr"),
    (
        "config-muon-fsdp",
        "train_cuda.py",
        "{train} --training.optimizer muon --hardware.distributed fsdp",
        "needs whole matrices",
        "hardware.distributed",
    ),
    # ------------------------------------------------------------------------------------ training runs
    ("out-is-a-file", "train_cuda.py", "{train} --output.dir {s}/a-file", "is a file, not a directory", "a-file"),
    ("out-holds-a-run", "train_cuda.py", "{used}", "already holds a run", "run/ckpt"),
    ("resume-not-ckpt", "train_cuda.py", "{train} --resume {s}/nothing.ckpt", "not a finished checkpoint", "nothing"),
    ("resume-other-model", "train_cuda.py", "{used} --resume auto --model.d_model 96", "model differs", "d_model"),
    ("resume-batch", "train_cuda.py", "{used} --resume auto --training.batch_size 2", "keep it equal", "batch_size"),
    ("resume-latest-escape", "train_cuda.py", "{escape} --resume auto", "not a checkpoint in", "latest"),
    ("resume-bad-state", "train_mlx.py", "{run_of:bad-state} --resume auto", "'step' must be an integer", "step"),
    ("resume-bad-moments", "train_mlx.py", "{run_of:bad-moments} --resume auto", "has shape (3, 3)", "exp_avg"),
    (
        "resume-other-optimizer",
        "train_cuda.py",
        "{used} --resume auto --training.optimizer muon",
        "holds adamw state but training.optimizer is muon",
        "optimizer.safetensors",
    ),
    (
        "resume-damaged-log",
        "train_cuda.py",
        "{run_of:damaged-log} --resume auto --training.max_steps 3",
        "is not a metrics record",
        "logs/smoke/metrics.jsonl",
    ),
    (
        "resume-no-moments",
        "train_cuda.py",
        "{run_of:no-moments} --resume auto",
        "no optimizer.safetensors",
        "init_from",
    ),
    ("init-from-missing", "train_cuda.py", "{train} --training.init_from {s}/gone", "checkpoint not found", "gone"),
    ("init-from-pickle", "train_cuda.py", "{train} --training.init_from {s}/pickle-only", "pickle", "pickle-only"),
    ("init-from-int8", "train_cuda.py", "{train} --training.init_from {s}/int8.ckpt", "not floating point", "int8"),
    ("data-missing", "train_cuda.py", "{train} --data.dataset {s}/gone.txt", "file not found", "gone.txt"),
    ("data-binary", "train_cuda.py", "{train} --data.dataset {s}/image.txt", "image.txt", "image.txt"),
    ("data-parquet-utf8", "train_cuda.py", "{train} --data.dataset {s}/latin1.parquet", "not valid UTF-8", "latin1"),
    ("data-gz", "train_mlx.py", "{train} --data.dataset {s}/cut.jsonl.gz", "cut.jsonl.gz", "cut.jsonl.gz"),
    ("data-tokenizer", "train_cuda.py", "{train} --data.tokenizer bpe:abc", "expected bpe:<vocab size>", "bpe:abc"),
    (
        "data-shard-tokens",
        "python -m data.prepare",
        "--config {smoke} --data.shard_tokens 0",
        "at least 1",
        "shard_tokens",
    ),
    ("chat-no-answer", "train_cuda.py", "{train} --data.dataset {s}/no-answer.jsonl", "no assistant message", "row 2"),
    (
        "chat-not-records",
        "train_mlx.py",
        "{train} --data.dataset {s}/ok.txt --data.format chat",
        "not a JSON",
        "ok.txt",
    ),
    ("chat-template", "train_cuda.py", "{chat} --data.chat_template {s}/broken.jinja", "does not parse", "template"),
    ("chat-template-loop", "train_cuda.py", "{chat} --data.chat_template {s}/loop.jinja", "did not finish", "loop"),
    (
        "chat-template-include",
        "train_cuda.py",
        "{chat} --data.chat_template {s}/include.jinja",
        "includes another template",
        "include.jinja",
    ),
    ("chat-template-empty", "train_cuda.py", "{chat} --data.chat_template {s}/empty.jinja", "is empty", "empty.jinja"),
    ("ahead-chat", "train_cuda.py", "{chat} --data.prepare ahead", "conversations are prepared whole", "data.prepare"),
    ("chat-format-choice", "train.py", "--config {smoke} --data.format sharegpt", "must be one of", "data.format"),
    ("data-cache-file", "train_cuda.py", "{train} --data.cache_dir {s}/a-file", "data.cache_dir", "a-file"),
    ("vocab-too-small", "train_cuda.py", "{train} --model.vocab_size 100", "smaller than the tokenizer", "vocab_size"),
    ("torch-given-mlx", "train_cuda.py", "{train} --hardware.accelerator mlx", "train with train_mlx.py", "mlx"),
    ("mlx-given-cuda", "train_mlx.py", "{train} --hardware.accelerator cuda", "train with train_cuda.py", "cuda"),
    ("devices-mismatch", "train_cuda.py", "{train} --hardware.devices 3", "process(es) run", "hardware.devices"),
    ("train-unknown-flag", "train_cuda.py", "{train} --resum auto", "unexpected argument", "--resum"),
    # ------------------------------------------------------------------------------------------- infer
    ("infer-missing", "infer.py", "--ckpt {s}/gone.ckpt", "checkpoint not found", "gone.ckpt"),
    ("infer-gguf", "infer.py", "--ckpt {s}/model.gguf", "GGUF version 0 is not supported", "model.gguf"),
    ("infer-not-model", "infer.py", "--ckpt {s}", "not a model directory", "{s}"),
    ("infer-config-json", "infer.py", "--ckpt {s}/config-not-json.ckpt", "not valid JSON", "config.json"),
    ("infer-zero-heads", "infer.py", "--ckpt {s}/zero-heads.ckpt", "must be a positive integer", "heads"),
    ("infer-rope-type", "infer.py", "--ckpt {s}/rope-str.ckpt", "must be an object or null", "rope_scaling"),
    ("infer-arch", "infer.py", "--ckpt {s}/gpt2-type.ckpt", "unsupported model_type 'gpt2'", "model_type"),
    ("infer-int8", "infer.py", "--ckpt {s}/int8.ckpt", "not floating point", "int8.ckpt"),
    ("infer-truncated", "infer.py", "--ckpt {s}/truncated.ckpt", "corrupt or truncated", "model.safetensors"),
    ("infer-nan", "infer.py", "--ckpt {s}/nan.ckpt", "holds NaN or inf", "model.norm.weight"),
    ("infer-extra-tensor", "infer.py", "--ckpt {s}/extra.ckpt", "unexpected tensor 'extra.weight'", "extra"),
    ("infer-missing-shard", "infer.py", "--ckpt {s}/no-shard.ckpt", "named in the index is missing", "shard"),
    ("infer-pickle", "infer.py", "--ckpt {s}/pickle-only", "only pickle weights", "pickle-only"),
    ("infer-big-tokenizer", "infer.py", "--ckpt {good} --tokenizer {s}/big-tok", "has 600 tokens", "big-tok"),
    ("infer-tokenizer-file", "infer.py", "--ckpt {good} --tokenizer {s}/gone.json", "not found", "gone.json"),
    ("infer-temperature", "infer.py", "--ckpt {good} --temperature -1", "temperature must be >= 0", "temperature"),
    ("infer-top-p", "infer.py", "--ckpt {good} --top-p 2", "top_p must be in (0, 1]", "top_p"),
    ("infer-temperature-nan", "infer.py", "--ckpt {good} --temperature nan", "must be a finite number", "temperature"),
    (
        "infer-penalty-inf",
        "infer.py",
        "--ckpt {good} --repetition-penalty inf",
        "must be a finite number",
        "repetition_penalty",
    ),
    ("infer-max-new", "infer.py", "--ckpt {good} --max-new-tokens 0", "must be >= 1", "--max-new-tokens"),
    (
        "infer-chat-template-recursion",
        "infer.py",
        "--ckpt {good} --chat -p hi --chat-template {s}/recursion.jinja",
        "calls nest deeper than",
        "recursion.jinja",
    ),
    (
        "infer-chat-template-binary",
        "infer.py",
        "--ckpt {good} --chat -p hi --chat-template {s}/image.txt",
        "not UTF-8 text",
        "image.txt",
    ),
    (
        "infer-chat-own-template",
        "infer.py",
        "--ckpt {s}/zero-template.ckpt --chat -p hi",
        "ZeroDivisionError",
        "zero-template.ckpt/tokenizer_config.json",
    ),
    ("infer-prompt-file", "infer.py", "--ckpt {good} --prompt-file {s}/gone.txt", "prompt file not found", "gone"),
    ("infer-prompt-binary", "infer.py", "--ckpt {good} --prompt-file {s}/image.txt", "not UTF-8 text", "image"),
    ("infer-dtype", "infer.py", "--ckpt {good} --dtype int8", "unknown dtype 'int8'", "--dtype"),
    ("infer-backend", "infer.py", "--ckpt {good} --backend gpu", "invalid choice: 'gpu'", "--backend"),
    ("infer-no-ckpt", "infer.py", "--prompt hi", "the following arguments are required: --ckpt", "--ckpt"),
    # ------------------------------------------------------------------------------------------ evaluate
    ("eval-no-match", "evaluate_checkpoints.py", "--checkpoints '{s}/none/*.ckpt'", "no checkpoint matches", "none"),
    (
        "eval-cases-missing",
        "evaluate_checkpoints.py",
        "--checkpoints {good} --cases {s}/gone.yaml",
        "case file not found",
        "gone.yaml",
    ),  # noqa: E501
    (
        "eval-cases-binary",
        "evaluate_checkpoints.py",
        "--checkpoints {good} --cases {s}/image.txt",
        "is not UTF-8 text",
        "image.txt",
    ),
    (
        "eval-cases-field",
        "evaluate_checkpoints.py",
        "--checkpoints {good} --cases {s}/typo-cases.yaml",
        "unknown field 'expct'",
        "typo-cases.yaml",
    ),  # noqa: E501
    (
        "eval-out-suffix",
        "evaluate_checkpoints.py",
        "--checkpoints {good} --out {s}/r.txt",
        "must end in .json or .csv",
        "--out",
    ),  # noqa: E501
    (
        "eval-out-parent",
        "evaluate_checkpoints.py",
        "--checkpoints {good} --out {s}/a-file/r.json",
        "cannot write",
        "a-file",
    ),  # noqa: E501
    ("eval-plot-dir", "evaluate_checkpoints.py", "--checkpoints {good} --plot {s}/run", "is a directory", "--plot"),
    ("eval-top-k", "evaluate_checkpoints.py", "--checkpoints {good} --top-k 0", "--hit-k must be >= 1", "--hit-k"),
    ("eval-damaged", "evaluate_checkpoints.py", "--checkpoints {good} {s}/int8.ckpt", "not floating point", "int8"),
    # ------------------------------------------------------------------------------------------- convert
    ("convert-no-command", "python -m convert", "", "required: COMMAND", "COMMAND"),
    ("convert-import-missing", "python -m convert", "import {s}/gone {s}/o.ckpt", "gone", "gone"),
    ("convert-import-pickle", "python -m convert", "import {s}/pickle-only {s}/o.ckpt", "pickle", "pickle-only"),
    (
        "convert-gguf-dtype",
        "python -m convert",
        "export-gguf {good} {s}/m.gguf --dtype q4_9",
        "unknown GGUF type 'q4_9'",
        "--dtype",
    ),  # noqa: E501
    ("convert-exists", "python -m convert", "export-gguf {good} {s}/model.gguf", "already exists", "model.gguf"),
    ("convert-export-int8", "python -m convert", "export-hf {s}/int8.ckpt {s}/hf", "not floating point", "int8"),
    ("convert-inspect-missing", "python -m convert", "inspect {s}/gone.ckpt", "gone.ckpt", "gone.ckpt"),
    # -------------------------------------------------------------------------------------- data.prepare
    ("prepare-missing", "python -m data.prepare", "--data.dataset {s}/gone.txt", "file not found", "gone.txt"),
    ("prepare-fraction", "python -m data.prepare", "--data.val_fraction 2", "must be in (0, 1)", "val_fraction"),
    (
        "prepare-tokenizer",
        "python -m data.prepare",
        "--data.dataset {s}/ok.txt --data.tokenizer {s}/image.txt",
        "image.txt",
        "image.txt",
    ),  # noqa: E501
    (
        "prepare-gz",
        "python -m data.prepare",
        "--data.dataset {s}/cut.jsonl.gz --data.cache_dir {s}/cache",
        "cut.jsonl.gz",
        "cut.jsonl.gz",
    ),  # noqa: E501
    (
        "prepare-cache-file",
        "python -m data.prepare",
        "--data.dataset {s}/ok.txt --data.cache_dir {s}/a-file",
        "data.cache_dir",
        "a-file",
    ),  # noqa: E501
    (
        "prepare-errors-choice",
        "python -m data.prepare",
        "--data.encoding_errors ignore",
        "must be one of",
        "encoding_errors",
    ),  # noqa: E501
]


def write_latin1_parquet(path: Path, texts: list[str]) -> None:
    """A parquet string column holding Latin-1 bytes (pyarrow, like other writers, does not check them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = [t.encode("latin-1") for t in texts]
    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
    buffers = [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(values))]
    pq.write_table(pa.table({"text": pa.Array.from_buffers(pa.string(), len(values), buffers)}), path)


def damage_second_line(ckpt: Path) -> None:
    """A metrics.jsonl damaged in its middle (not what a kill leaves: that is a torn last line, dropped)."""
    metrics = ckpt.parent / "logs" / "smoke" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{not a record", *lines[1:]]) + "\n")


def damaged_copy(good: Path, path: Path, change) -> Path:
    shutil.copytree(good, path)
    change(path)
    return path


def edit_json(name: str, **fields):
    def change(path: Path) -> None:
        hf = json.loads((path / name).read_text())
        (path / name).write_text(json.dumps({**hf, **fields}))

    return change


def edit_config(**fields):
    return edit_json("config.json", **fields)


def shard_gone(path: Path) -> None:
    """A sharded layout whose index names a shard that is not there."""
    (path / "model.safetensors").rename(path / "model-1.safetensors")
    index = {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


def rewrite_weights(transform):
    def change(path: Path) -> None:
        save_file(transform(load_weights(path)), path / "model.safetensors")

    return change


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, data_cache):
    """A trained run plus one damaged copy of its checkpoint per kind of damage, and hostile files."""
    s = tmp_path_factory.mktemp("sandbox")
    base = smoke_argv(s / "run", data_cache, "--training.max_steps", "2", "--training.eval_every", "0")
    torch_train(base)
    good = s / "run" / "ckpt" / "final.ckpt"
    copies = {
        "config-not-json.ckpt": lambda p: (p / "config.json").write_text("{ not json"),
        "zero-heads.ckpt": edit_config(num_attention_heads=0),
        "rope-str.ckpt": edit_config(rope_scaling="linear"),
        "gpt2-type.ckpt": edit_config(model_type="gpt2"),
        "int8.ckpt": rewrite_weights(lambda w: {k: (v * 100).astype(np.int8) for k, v in w.items()}),
        "truncated.ckpt": lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:999]),
        "nan.ckpt": rewrite_weights(lambda w: {**w, "model.norm.weight": w["model.norm.weight"] * np.nan}),
        "extra.ckpt": rewrite_weights(lambda w: {**w, "extra.weight": np.zeros((64, 64), np.float32)}),
        "no-shard.ckpt": shard_gone,
        "zero-template.ckpt": edit_json("tokenizer_config.json", chat_template="{{ 1 / 0 }}"),
    }
    for name, change in copies.items():
        damaged_copy(good, s / name, change)
    for name, change in {
        "bad-state": lambda p: (p / "final.ckpt/trainer_state.json").write_text(json.dumps({"step": "two"})),
        "bad-moments": lambda p: save_file(
            {**load_optimizer(p / "final.ckpt"), "model.norm.weight.exp_avg": np.zeros((3, 3), np.float32)},
            p / "final.ckpt/optimizer.safetensors",
        ),
        "no-moments": lambda p: (p / "final.ckpt/optimizer.safetensors").unlink(),
        "damaged-log": damage_second_line,
    }.items():
        shutil.copytree(s / "run", s / name)
        change(s / name / "ckpt")
    (s / "escape" / "ckpt").mkdir(parents=True)
    (s / "escape" / "ckpt" / "latest").write_text("../../run/ckpt/final.ckpt\n")
    (s / "pickle-only").mkdir()
    (s / "pickle-only" / "config.json").write_text((good / "config.json").read_text())
    (s / "pickle-only" / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": 1}))
    (s / "broken.yaml").write_text("model: [unclosed\n")
    (s / "list.yaml").write_text("- model\n- training\n")
    (s / "a-file").write_text("a file, not a directory\n")
    (s / "image.txt").write_bytes(PNG)
    write_latin1_parquet(s / "latin1.parquet", ["Plain text. " * 50, "naïve café " * 50])
    (s / "ok.txt").write_text("Plain text. " * 100)
    (s / "cut.jsonl.gz").write_bytes(b'{"text": "not compressed at all"}\n' * 50)  # named .gz, plain inside
    (s / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    talk = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (s / "no-answer.jsonl").write_text(json.dumps(talk) + "\n" + json.dumps({"messages": talk["messages"][:1]}) + "\n")
    (s / "chat.jsonl").write_text((json.dumps(talk) + "\n") * 20)
    (s / "broken.jinja").write_text("{% for message in messages %}{{ message['content'] }")
    (s / "loop.jinja").write_text("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}")
    (s / "include.jinja").write_text("{% include '/etc/passwd' %}")
    (s / "empty.jinja").write_text("")
    (s / "recursion.jinja").write_text("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")
    (s / "typo-cases.yaml").write_text("- {prompt: a, expct: b}\n")
    write_word_tokenizer(s / "big-tok", 600)
    placeholders = {
        "s": str(s),
        "smoke": str(ROOT / "configs/smoke.yaml"),
        "good": str(good),
        "train": " ".join(smoke_argv(s / "fresh", data_cache)),
        "used": " ".join(base),
        "escape": " ".join(smoke_argv(s / "escape", data_cache)),
        "chat": " ".join(smoke_argv(s / "fresh", data_cache, "--data.dataset", str(s / "chat.jsonl"))),
    }
    for name in ("bad-state", "bad-moments", "no-moments", "damaged-log"):
        placeholders[f"run_of:{name}"] = " ".join(smoke_argv(s / name, data_cache))
    return s, placeholders


def run_case(command: str, argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        run_cli(lambda: COMMANDS[command](argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def fill(template: str, placeholders: dict[str, str]) -> list[str]:
    import shlex

    for key, value in placeholders.items():
        template = template.replace("{" + key + "}", value)
    return shlex.split(template)


def message_lines(err: str) -> list[str]:
    """stderr without progress bars (tqdm redraws with \\r), blank lines, and what a resume says before it checks
    the checkpoint (`resuming ... with its own settings`, and the note on settings not applied)."""
    lines = [line.split("\r")[-1] for line in err.splitlines()]
    chatter = ("tokenizing", "read ", "resuming ", "note: ")
    return [line for line in lines if line.strip() and not line.lstrip().startswith(chatter)]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_named_line_and_changes_nothing(case, sandbox, capsys):
    name, command, template, expected, named = case
    root, placeholders = sandbox
    before = file_hashes(root)
    code, err = run_case(command, fill(template, placeholders), capsys)
    lines = message_lines(err)
    assert code == 2, err
    assert "Traceback" not in err and lines and len(lines) <= 2, err
    assert lines[-1].startswith("error: ") and expected in lines[-1], lines[-1]
    assert fill(named, placeholders)[0] in lines[-1], lines[-1]
    after = file_hashes(root)
    assert {k: after.get(k) for k in before} == before  # nothing that existed was changed or removed
    MESSAGES[name] = (command, template, lines[-1].removeprefix("error: ").replace(placeholders["s"], "…"))


MESSAGES: dict[str, tuple[str, str, str]] = {}


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    import os
    import subprocess

    argv = [sys.executable, str(ROOT / "infer.py"), "--ckpt", str(tmp_path / "gone.ckpt")]
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True, timeout=120)
    env = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, "TINYLLAMA_DEBUG": "1"})
    assert (
        plain.returncode == 2
        and plain.stderr.startswith("error: checkpoint not found")
        and "Traceback" not in plain.stderr
    )
    for run in (debug, env):
        assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr
        assert "CheckpointError: checkpoint not found" in run.stderr


def test_a_reader_that_stops_reading_ends_the_command_quietly():
    """`infer.py ... | head`: the closed pipe is no error line and no traceback; status 141 (SIGPIPE's)."""
    import subprocess

    code = (
        "import sys; from tinyllama.core.cli import run_cli\n"
        "def main():\n    while True:\n        sys.stdout.write('token ' * 1000); sys.stdout.flush()\n"
        "run_cli(main)"
    )
    piped = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    piped.stdout.read(5)
    piped.stdout.close()
    assert piped.wait(timeout=60) == 141 and piped.stderr.read() == b""


def test_docs_list_every_case():
    text = DOC.read_text()
    missing = [c[0] for c in CASES if f"`{c[0]}`" not in text]
    assert len(CASES) >= 60 and not missing, missing


def write_doc() -> None:
    """Run the matrix and rewrite docs/errors.md from what the commands printed."""
    code = pytest.main([__file__, "-q", "-k", "bad_input_is_one", "-p", "no:cacheprovider"])
    if code:
        raise SystemExit(code)
    messages = sys.modules["test_bad_input"].MESSAGES  # the module pytest imported and ran
    lines = [
        "# Errors",
        "",
        "Every command answers bad input with one line on stderr, `error: <what is wrong>; <the fix>`, and exit",
        "code 2; nothing that existed before is changed. `--debug` (or `TINYLLAMA_DEBUG=1`) shows the Python",
        "traceback instead. Below: every case of the test matrix (`tests/test_bad_input.py`), with the message",
        "the command printed (`…` stands for the directory the test ran in). Regenerate with",
        "`python tests/test_bad_input.py`. Output piped into a reader that stops early (`infer.py ... | head`)",
        "ends the command quietly with status 141, as `cat` does.",
        "",
        "In the arguments: `{smoke}` is `--config configs/smoke.yaml`'s file; `{train}` the arguments of a",
        "fresh smoke run; `{used}` those of a run that already finished, `{good}` its `final.ckpt`;",
        "`{escape}` a run whose `latest` points outside its directory; `{run_of:X}` a finished run whose",
        "checkpoint was damaged as X says.",
        "",
        "| case | command | arguments | message |",
        "| --- | --- | --- | --- |",
    ]
    for name, *_ in CASES:
        command, template, message = messages[name]
        args = template.replace("{s}", "…").replace("|", "\\|")
        lines.append(f"| `{name}` | `{command}` | `{args}` | {message.replace('|', chr(92) + '|')} |")
    DOC.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(write_doc())
