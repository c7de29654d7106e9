"""evaluate_checkpoints.py: table, JSON/CSV records, plot, backend agreement, a model that learned its case."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers import TINY_MODELS, random_weights, torch_cross_entropy, write_word_tokenizer

from tinyllama import evaluate_checkpoints as ev
from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.core.cli import run_cli
from tinyllama.core.config import Config, DataConfig, ModelConfig, TrainingConfig

CASES = """\
- prompt: w5 w6
  expect: w7
  name: short
  tags: [smoke]
- prompt: w9 w10 w11
  expect: w12 w13 w14
- {prompt: "w3", expect: "w4", name: one-token, source: made up}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(argv, capsys):
    code = 0
    try:
        run_cli(lambda: ev.main(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Three checkpoints, steps 10/20/30, written out of step order, plus a case file."""
    root = tmp_path_factory.mktemp("smoke")
    cfg = TINY_MODELS["gqa8x2-tied"]
    tok = write_word_tokenizer(root / "tok", cfg.vocab_size)
    for name, step in (("b", 30), ("c", 10), ("a", 20)):
        state = {"step": step, "tokens_seen": step * 1024}
        save_checkpoint(
            root / "ckpts" / f"{name}.ckpt", random_weights(cfg, step), cfg, tokenizer_dir=tok, trainer_state=state
        )
    (root / "cases.yaml").write_text(CASES)
    return root


def test_three_checkpoints_give_table_records_and_plot(smoke, capsys):
    out_json, out_csv, png = smoke / "r.json", smoke / "r.csv", smoke / "eval.png"
    argv = ["--checkpoints", str(smoke / "ckpts/*.ckpt"), "--cases", str(smoke / "cases.yaml"), "--top-k", "5"]
    code, out, err = run([*argv, "--backend", "torch", "--out", str(out_json), "--plot", str(png)], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    head = ["checkpoint", "step", "tokens", "val_loss", "val_bpb", "val_ppl", "top1", "top5", "mean_logprob"]
    assert lines[0].split() == head
    assert [line.split()[:2] for line in lines[2:]] == [["c.ckpt", "10"], ["a.ckpt", "20"], ["b.ckpt", "30"]]
    assert "no validation loss for 3 of 3 checkpoints" in err  # no train_config.yaml: skipped with a note

    records = json.loads(out_json.read_text())
    assert [r["step"] for r in records] == [10, 20, 30] and records[2]["tokens"] == 30 * 1024
    assert set(records[0]) == {"checkpoint", "step", "tokens", "val_loss", "val_bpb", "top1", "topk", "k", "cases"}
    case = records[0]["cases"][1]
    assert set(case) == {"name", "prompt", "expect", "rank", "hit", "logprob", "mean_logprob"}
    assert case["name"] == "case2" and case["expect"] == "w12 w13 w14"
    assert case["mean_logprob"] == pytest.approx(case["logprob"] / 3) and case["logprob"] < 0
    for r in records:
        assert r["k"] == 5 and r["val_loss"] is None and r["val_bpb"] is None
        assert r["top1"] == sum(c["rank"] == 1 for c in r["cases"]) / 3
        assert r["topk"] == sum(c["rank"] <= 5 for c in r["cases"]) / 3
        assert all(c["hit"] == (c["rank"] <= 5) for c in r["cases"])
    assert len({r["cases"][0]["logprob"] for r in records}) == 3  # different weights, different scores
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    code, _, err = run([*argv, "--backend", "mlx", "--out", str(out_csv)], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 9 and rows[0]["step"] == "10" and rows[0]["case_name"] == "short"
    mlx_scores = [float(row["case_logprob"]) for row in rows]  # MLX agrees with torch
    torch_scores = [c["logprob"] for r in records for c in r["cases"]]
    np.testing.assert_allclose(mlx_scores, torch_scores, atol=1e-4)
    assert [int(row["case_rank"]) for row in rows] == [c["rank"] for r in records for c in r["cases"]]


def train_on_sentence(sentence: list[int], vocab: int, steps: int = 100) -> dict[str, np.ndarray]:
    """A tiny torch model fitted to one repeated sentence; returns its weights (numpy, HF names)."""
    from tinyllama.torch_model.state import build_model, model_state

    cfg = ModelConfig(vocab_size=vocab, n_layers=2, d_model=48, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=64)
    torch.manual_seed(0)
    model = build_model(cfg, seed=0).train()
    stream = torch.tensor(sentence * 40)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - 33, (8,), generator=gen)
        batch = torch.stack([stream[s : s + 33] for s in starts])
        loss = torch_cross_entropy(model(batch[:, :-1]), batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2
    return model_state(model), cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    sentence = [5, 9, 3, 7, 11, 4, 8, 12, 6, 10]  # "w5 w9 w3 w7 w11 w4 w8 w12 w6 w10", then again
    weights, cfg = train_on_sentence(sentence, vocab=16)
    tok = write_word_tokenizer(root / "tok", 16)
    corpus = root / "corpus.txt"
    corpus.write_text(" ".join(f"w{i}" for i in sentence * 200) + "\n")
    run_cfg = Config(
        model=cfg,
        training=TrainingConfig(seq_len=32),
        data=DataConfig(dataset=str(corpus), tokenizer=str(tok), val_fraction=0.1, cache_dir=str(root / "cache")),
    )
    ckpt = save_checkpoint(
        root / "final.ckpt", weights, cfg, tokenizer_dir=tok, train_config=run_cfg, trainer_state={"step": 100}
    )
    (root / "cases.yaml").write_text(
        "- {name: learned, prompt: 'w5 w9 w3', expect: 'w7 w11 w4'}\n"
        "- {name: wrap-around, prompt: 'w6 w10', expect: 'w5 w9'}\n"
        "- {name: never-seen, prompt: 'w5 w9 w3', expect: 'w2'}\n"
    )
    return root, ckpt


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_learned_answer_scores_top1_with_high_logprob(trained, backend, capsys):
    root, ckpt = trained
    out = root / f"r-{backend}.json"
    argv = ["--checkpoints", str(ckpt), "--cases", str(root / "cases.yaml"), "--top-k", "3", "--backend", backend]
    code, _, err = run([*argv, "--out", str(out), "--val-tokens", "-1"], capsys)
    assert code == 0, err
    cases = {c["name"]: c for c in json.loads(out.read_text())[0]["cases"]}
    for name in ("learned", "wrap-around"):
        assert cases[name]["rank"] == 1 and cases[name]["hit"]
        assert cases[name]["mean_logprob"] > -0.3
    assert cases["never-seen"]["rank"] > 3 and not cases["never-seen"]["hit"]
    assert cases["never-seen"]["logprob"] < -3


def test_validation_loss_from_the_prepared_split(trained, capsys):
    root, ckpt = trained
    argv = ["--checkpoints", str(ckpt), "--cases", str(root / "cases.yaml"), "--backend", "torch"]
    code, out, err = run([*argv, "--out", str(root / "v0.json")], capsys)
    assert code == 0 and "is not prepared here (add --prepare-val)" in err  # never builds on its own
    assert json.loads((root / "v0.json").read_text())[0]["val_loss"] is None

    losses = {}
    for backend in ("torch", "mlx"):
        extra = ["--prepare-val"] if backend == "torch" else []  # the second run finds the cache
        code, out, err = run([*argv[:-1], backend, *extra, "--out", str(root / "v.json")], capsys)
        assert code == 0, err
        losses[backend] = json.loads((root / "v.json").read_text())[0]["val_loss"]
        assert f"{math.exp(losses[backend]):.2f}" in out  # perplexity column
    assert 0 < losses["torch"] < 0.5  # the model knows this text
    assert losses["mlx"] == pytest.approx(losses["torch"], abs=1e-4)


def test_a_checkpoint_is_scored_only_on_the_split_it_trained_on(trained, tmp_path, capsys):
    root, ckpt = trained
    run_ckpt = tmp_path / "run.ckpt"
    shutil.copytree(ckpt, run_ckpt)
    argv = ["--checkpoints", str(run_ckpt), "--cases", str(root / "cases.yaml"), "--backend", "torch", "--prepare-val"]

    def score(split_sizes: dict) -> tuple[float | None, str]:
        state = json.loads((run_ckpt / "trainer_state.json").read_text())
        (run_ckpt / "trainer_state.json").write_text(json.dumps({**state, "data_signature": {"tokens": split_sizes}}))
        code, _, err = run([*argv, "--out", str(tmp_path / "v.json")], capsys)
        assert code == 0, err
        return json.loads((tmp_path / "v.json").read_text())[0]["val_loss"], err

    # as if an earlier version had prepared its data: a split of other sizes than today's
    loss, err = score({"train": 1, "val": 1})
    assert loss is None and "no longer prepared here" in err
    (meta,) = (root / "cache" / "prepared").glob("*/meta.json")  # what --prepare-val prepared just now
    loss, err = score(json.loads(meta.read_text())["tokens"])
    assert loss is not None and 0 < loss < 0.5 and "prepared here" not in err


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_mean_loss_equals_numpy_cross_entropy(backend):
    cfg = TINY_MODELS["mha4-untied"]
    weights = random_weights(cfg)
    windows = np.random.default_rng(0).integers(0, cfg.vocab_size, (5, 17))
    if backend == "torch":
        from tinyllama.torch_model.generate import as_backend
        from tinyllama.torch_model.state import build_model

        model = build_model(cfg, weights).eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(windows[:, :-1])).numpy()
    else:
        import mlx.core as mx

        from tinyllama.mlx_model.generate import as_backend
        from tinyllama.mlx_model.state import build_model

        model = build_model(cfg, weights)
        logits = np.array(model(mx.array(windows[:, :-1])))
    logits = logits.astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, windows[:, 1:, None], -1)[..., 0]
    assert as_backend(model).mean_loss(windows, batch_size=2) == pytest.approx(float((logz - picked).mean()), abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_val_loss_is_the_trainers_own(tmp_path, data_cache, backend, capsys):
    """One definition of validation loss: evaluate_checkpoints reports, for the final checkpoint, the val
    loss and bits per byte the trainer logged at its last step (same windows, same weighting), on either
    backend."""
    from helpers import smoke_argv

    from tinyllama import train_cuda

    args = ("--training.max_steps", "6", "--training.eval_every", "6", "--training.save_every", "0")
    train_cuda.main(smoke_argv(tmp_path, data_cache, "--hardware.accelerator", "cpu", *args))
    logged = [json.loads(line) for line in (tmp_path / "logs/smoke/metrics.jsonl").read_text().splitlines()]
    trainer_val = [r["loss"] for r in logged if r["split"] == "val"]
    trainer_bpb = [r["bpb"] for r in logged if r["split"] == "val"]
    capsys.readouterr()
    out = tmp_path / "r.json"
    code, _, err = run(
        ["--checkpoints", str(tmp_path / "ckpt/final.ckpt"), "--backend", backend, "--out", str(out)], capsys
    )
    assert code == 0, err
    assert len(trainer_val) == 1
    record = json.loads(out.read_text())[0]
    assert record["val_loss"] == pytest.approx(trainer_val[0], abs=2e-5)
    assert record["val_bpb"] == pytest.approx(trainer_bpb[0], abs=2e-5) and 0 < record["val_bpb"] < trainer_val[0]
