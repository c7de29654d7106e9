"""Fine-tuning on conversations end to end: both trainers on packed, masked rows, the same losses, exact
resume on the same and on the other backend, and the chat template carried into checkpoints and GGUF."""

from __future__ import annotations

import json

import pytest
from helpers import smoke_argv, train_losses

from tinyllama import train_cuda, train_mlx
from tinyllama.data.chat import DEFAULT_TEMPLATE

pytestmark = pytest.mark.slow  # each test trains end to end

ARGS = (
    "--training.max_steps", "10", "--training.eval_every", "5", "--training.save_every", "5",
    "--training.grad_accum", "2", "--training.batch_size", "4", "--data.val_fraction", "0.1",
)  # fmt: skip


def _conversations(path):
    words = "alpha beta gamma delta river stone cloud north city music".split()
    with open(path, "w") as f:
        for i in range(150):
            q = " ".join(words[(i + k) % 10] for k in range(2 + i % 5))
            a = " ".join(words[(i * 3 + k) % 10] for k in range(3 + i % 11))
            messages = [{"role": "user", "content": f"{q}?"}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def _argv(run_dir, cache, data, *extra):
    return smoke_argv(run_dir, cache, "--data.dataset", str(data), *ARGS, *extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    data, cache = _conversations(root / "chat.jsonl"), root / "cache"
    (root / "cases.yaml").write_text("- {prompt: alpha beta, expect: gamma}\n")
    train_cuda.main(_argv(root / "torch", cache, data, "--hardware.accelerator", "cpu"))
    train_mlx.main(_argv(root / "mlx", cache, data))
    return root, data, cache


def test_both_trainers_learn_the_answers_with_the_same_masked_loss(runs):
    root, _, _ = runs
    torch_losses, mlx_losses = train_losses(root / "torch"), train_losses(root / "mlx")
    assert sorted(torch_losses) == list(range(1, 11))
    for step in torch_losses:
        assert abs(torch_losses[step] - mlx_losses[step]) <= 1e-4 * torch_losses[step], step
    assert torch_losses[10] < torch_losses[1] - 1.0
    vals = [json.loads(x) for x in (root / "torch" / "logs" / "smoke" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in vals if r["split"] == "val"] == [5, 10]
    config = json.loads((root / "torch" / "ckpt" / "final.ckpt" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == DEFAULT_TEMPLATE


@pytest.mark.parametrize("second", ["torch", "mlx"])
def test_resume_from_a_torch_checkpoint_is_exact(runs, tmp_path, second):
    root, data, cache = runs
    argv = _argv(tmp_path, cache, data, "--resume", str(root / "torch" / "ckpt" / "step-000005.ckpt"))
    if second == "torch":
        train_cuda.main([*argv, "--hardware.accelerator", "cpu"])
    else:
        train_mlx.main(argv)
    reference, resumed = train_losses(root / "torch"), train_losses(tmp_path)
    assert sorted(resumed) == list(range(6, 11))
    tolerance = 1e-6 if second == "torch" else 1e-4
    for step in resumed:
        assert abs(resumed[step] - reference[step]) <= tolerance * reference[step], (step, reference, resumed)


def test_the_gguf_export_carries_the_chat_template(runs, tmp_path):
    from tinyllama.convert.gguf_export import export_gguf
    from tinyllama.convert.gguf_import import metadata, open_reader

    root, _, _ = runs
    out = export_gguf(root / "torch" / "ckpt" / "final.ckpt", tmp_path / "m.gguf")
    assert metadata(open_reader(out))["tokenizer.chat_template"] == DEFAULT_TEMPLATE


def test_evaluate_checkpoints_reports_the_trainers_masked_val_loss(runs, capsys):
    from tinyllama import evaluate_checkpoints

    root, _, _ = runs
    out = root / "eval.json"
    evaluate_checkpoints.main(["--checkpoints", str(root / "torch" / "ckpt" / "final.ckpt"), "--backend", "torch",
                               "--cases", str(root / "cases.yaml"), "--out", str(out)])  # fmt: skip
    records = [json.loads(x) for x in (root / "torch" / "logs" / "smoke" / "metrics.jsonl").read_text().splitlines()]
    trainer = [r["loss"] for r in records if r["split"] == "val"][-1]
    assert json.loads(out.read_text())[0]["val_loss"] == pytest.approx(trainer, abs=2e-5)
