"""The checkpoint directory: bit-exact round trips, atomic writes, pruning, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_MODELS

import tinyllama.core.checkpoint as ckpt_mod
from tinyllama.core.architecture import init_weights
from tinyllama.core.checkpoint import (
    list_checkpoints,
    prune_checkpoints,
    read_train_config,
    read_trainer_state,
    resolve_resume,
    save_checkpoint,
    write_latest,
)
from tinyllama.core.config import load_config
from tinyllama.core.fs import remove_debris
from tinyllama.core.model_files import CheckpointError, load_optimizer, load_weights, read_model_config
from tinyllama.mlx_model.state import build_model as build_mlx
from tinyllama.mlx_model.state import load_model as load_mlx
from tinyllama.mlx_model.state import model_state as mlx_state
from tinyllama.torch_model.state import build_model as build_torch
from tinyllama.torch_model.state import load_model as load_torch
from tinyllama.torch_model.state import model_state as torch_state


def fake_optimizer(weights, seed=0):
    rng = np.random.default_rng(seed)
    moments = {}
    for name, w in weights.items():
        moments[f"{name}.exp_avg"] = rng.standard_normal(w.shape).astype(np.float32)
        moments[f"{name}.exp_avg_sq"] = rng.random(w.shape).astype(np.float32)
    return moments


def bits(array):
    return array.view(np.uint16) if array.dtype == ml_dtypes.bfloat16 else array.view(np.uint32)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model_name", ["gqa8x2-tied", "mha4-untied"])
def test_round_trip_is_bit_identical(tmp_path, dtype, model_name):
    cfg = TINY_MODELS[model_name]
    weights = init_weights(cfg, seed=7)
    if dtype == "bfloat16":
        weights = {k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()}
    optimizer = fake_optimizer(weights)
    state = {"step": 120, "tokens_seen": 245760, "lr": 2.9e-4, "loss": 3.41, "backend": "mlx", "data": {"seed": 3}}
    config = load_config(ROOT / "configs" / "smoke.yaml")
    path = save_checkpoint(
        tmp_path / "step-000120.ckpt", weights, cfg, optimizer=optimizer, trainer_state=state, train_config=config
    )

    loaded = load_weights(path)
    assert loaded.keys() == weights.keys()
    assert ("lm_head.weight" in loaded) == (not cfg.tie_embeddings)
    for name in weights:
        assert loaded[name].dtype == weights[name].dtype
        assert np.array_equal(bits(loaded[name]), bits(weights[name]))
    loaded_opt = load_optimizer(path)
    assert loaded_opt.keys() == optimizer.keys()
    assert all(np.array_equal(loaded_opt[k], optimizer[k]) for k in optimizer)
    assert {k: v for k, v in read_trainer_state(path).items() if k in state} == state
    assert read_train_config(path) == config.to_dict()
    assert read_model_config(path) == cfg
    hf = json.loads((path / "config.json").read_text())
    assert hf["tie_word_embeddings"] is cfg.tie_embeddings
    assert hf["rope_theta"] == hf["rope_parameters"]["rope_theta"] == cfg.rope_theta
    assert hf["torch_dtype"] == dtype


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_bf16_model_survives_save_and_load_on_each_backend(tmp_path, backend):
    cfg = TINY_MODELS["mha4-untied"]
    build, state_of, load = (
        (build_torch, torch_state, load_torch) if backend == "torch" else (build_mlx, mlx_state, load_mlx)
    )
    model = build(cfg, init_weights(cfg, 1), dtype="bfloat16")
    before = state_of(model)
    assert next(iter(before.values())).dtype == ml_dtypes.bfloat16
    path = save_checkpoint(tmp_path / "bf16.ckpt", before, cfg)
    after = state_of(load(path)[0])
    assert all(np.array_equal(bits(before[k]), bits(after[k])) for k in before)


def dead_pid() -> int:
    """The pid of a process that has exited (what a killed writer's leftovers carry)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_unfinished_write_is_never_listed_or_resumed(tmp_path, monkeypatch):
    cfg = TINY_MODELS["gqa8x2-tied"]
    weights = init_weights(cfg)
    good = save_checkpoint(tmp_path / "step-000010.ckpt", weights, cfg, trainer_state={"step": 10})
    write_latest(tmp_path, good)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "step-000020.ckpt", weights, cfg, trainer_state={"step": 20})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000010.ckpt"]  # an exception cleans up
    # a process killed mid-write leaves its temporary directory behind: never listed, never resumed
    save_checkpoint(tmp_path / "step-000030.ckpt", weights, cfg, trainer_state={"step": 30})
    killed = tmp_path / f".step-000030.ckpt.tmp-{dead_pid()}"
    (tmp_path / "step-000030.ckpt").rename(killed)
    (tmp_path / "broken.ckpt").mkdir()  # a *.ckpt without weights, e.g. an interrupted copy
    (tmp_path / "broken.ckpt" / "config.json").write_text("{}")

    assert list_checkpoints(tmp_path) == [good]
    assert resolve_resume("auto", tmp_path) == good
    (tmp_path / "latest").unlink()
    assert resolve_resume("auto", tmp_path) == good
    with pytest.raises(CheckpointError, match="a .tmp directory is a write that may not have finished"):
        resolve_resume(str(killed), tmp_path)
    with pytest.raises(CheckpointError, match="not a finished checkpoint"):
        resolve_resume(str(tmp_path / "broken.ckpt"), tmp_path)
    assert resolve_resume("auto", tmp_path / "nothing-here") is None
    assert remove_debris(tmp_path) == [killed] and not killed.exists()
    for name in ("final.ckpt.tmp", "step-000010.ckpt.tmp-backup"):  # finished-looking, yet named as a write
        shutil.copytree(good, tmp_path / name)
        with pytest.raises(CheckpointError, match="a .tmp directory is a write that may not have finished"):
            resolve_resume(str(tmp_path / name), tmp_path)


def test_overwriting_a_checkpoint_replaces_it_whole(tmp_path):
    cfg = TINY_MODELS["gqa8x2-tied"]
    path = save_checkpoint(
        tmp_path / "final.ckpt", init_weights(cfg, 1), cfg, optimizer=fake_optimizer(init_weights(cfg))
    )
    new = init_weights(cfg, 2)
    save_checkpoint(path, new, cfg, trainer_state={"step": 5})
    assert np.array_equal(load_weights(path)["model.norm.weight"], new["model.norm.weight"])
    assert np.array_equal(load_weights(path)["model.embed_tokens.weight"], new["model.embed_tokens.weight"])
    assert load_optimizer(path) is None  # nothing of the old directory remains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.ckpt"]


def test_truncated_or_mismatched_weights_give_clear_errors(tmp_path):
    cfg = TINY_MODELS["gqa8x2-tied"]
    path = save_checkpoint(tmp_path / "a.ckpt", init_weights(cfg), cfg)
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_weights(path)

    other = save_checkpoint(tmp_path / "b.ckpt", init_weights(cfg), cfg)
    hf = json.loads((other / "config.json").read_text())
    hf["intermediate_size"] = 99
    (other / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match="mlp.gate_proj.weight' has shape"):
        load_weights(other)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_weights(tmp_path / "missing.ckpt")
    (other / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_model_config(other)
    sharded = save_checkpoint(tmp_path / "c.ckpt", init_weights(cfg), cfg)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="shard 'model-00002-of-00002.safetensors' named in the index is missing"):
        load_weights(sharded)
    (sharded / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="damaged \\(no weight_map\\)"):
        load_weights(sharded)
    (other / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        read_model_config(other)


def test_prune_keeps_newest_final_and_latest(tmp_path):
    cfg = TINY_MODELS["gqa8x2-tied"]
    weights = init_weights(cfg)
    paths = [
        save_checkpoint(tmp_path / f"step-{s:06d}.ckpt", weights, cfg, trainer_state={"step": s})
        for s in (10, 20, 30, 40)
    ]
    save_checkpoint(tmp_path / "final.ckpt", weights, cfg, trainer_state={"step": 40})
    write_latest(tmp_path, paths[0])  # e.g. a resume pointer still on an old one
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["step-000020.ckpt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-000010.ckpt",
        "step-000030.ckpt",
        "step-000040.ckpt",
        "final.ckpt",
    ]


def test_a_checkpoint_no_run_wrote_is_never_pruned_or_resumed(tmp_path):
    """An imported model beside a run's checkpoints (checkpoints/smol.ckpt) is not the run's to delete."""
    cfg = TINY_MODELS["gqa8x2-tied"]
    weights = init_weights(cfg)
    imported = save_checkpoint(tmp_path / "smol.ckpt", weights, cfg, trainer_state={"step": 0, "backend": "convert"})
    assert resolve_resume("auto", tmp_path) is None  # nothing of a run here: a fresh start
    runs = [save_checkpoint(tmp_path / f"step-{s:06d}.ckpt", weights, cfg, trainer_state={"step": s}) for s in (1, 2)]
    assert prune_checkpoints(tmp_path, keep_last=1) == runs[:1]
    assert imported.is_dir() and resolve_resume("auto", tmp_path) == runs[1]


@pytest.mark.slow
def test_written_checkpoint_loads_in_transformers_offline_in_a_fresh_process(tmp_path):
    cfg = TINY_MODELS["mha4-untied"]
    weights = init_weights(cfg, 5)
    path = save_checkpoint(tmp_path / "final.ckpt", weights, cfg)
    tokens = [[1, 2, 3, 4]]
    expected = build_torch(cfg, weights)(torch.tensor(tokens)).detach().numpy()[0, -1, :4]
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM; "
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
        f"print(m(torch.tensor({tokens})).logits[0, -1, :4].tolist())"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, check=True)
    got = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    assert np.abs(got - expected).max() < 1e-4


def test_mlx_model_loads_a_bf16_checkpoint_in_bf16(tmp_path):
    cfg = TINY_MODELS["gqa8x2-tied"]
    weights = {k: v.astype(ml_dtypes.bfloat16) for k, v in init_weights(cfg).items()}
    model, _ = load_mlx(save_checkpoint(tmp_path / "x.ckpt", weights, cfg))
    assert model.model.embed_tokens.weight.dtype == mx.bfloat16


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_every_file_of_a_checkpoint_and_of_an_export_has_a_normal_files_mode(tmp_path, mask):
    """safetensors' save_file makes its file 0600 where the rest of a checkpoint was 0644: every file written through
    core.fs.atomic_path (checkpoints, converter outputs) gets 0666 less the umask, directories 0777 less it."""
    from tinyllama.convert.__main__ import main as convert_main

    cfg = TINY_MODELS["gqa8x2-tied"]
    weights = init_weights(cfg)
    old = os.umask(mask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("a file the user makes")
        path = save_checkpoint(tmp_path / "final.ckpt", weights, cfg, optimizer=fake_optimizer(weights))
        convert_main(["export-hf", str(path), str(tmp_path / "release")])
    finally:
        os.umask(old)
    assert oct(plain.stat().st_mode & 0o777) == oct(0o666 & ~mask)
    for out in (path, tmp_path / "release"):
        files = sorted(p for p in out.rglob("*") if p.is_file())
        assert {p.name for p in files} >= {"model.safetensors", "config.json"}
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~mask) for p in files}
        assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~mask)
    assert (path / "optimizer.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
