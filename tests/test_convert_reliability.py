"""`python -m convert` never writes a bad model, never loses an existing file, and says what is wrong in one line.

Each bad input runs the real CLI in a fresh process and must end with exit code 2, exactly one `error: ` line
on stderr naming the offending file or option, no traceback, every file that existed before byte-identical,
and no temporary debris. Read-only and full output locations are real mounts (skipped where mounting is not
permitted); a write that fails mid-way is a real full tmpfs with the free-space precheck switched off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import resource
import shutil
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import GGUF_MODELS, ROOT, make_checkpoint, random_weights
from safetensors.numpy import load_file, save_file

from tinyllama.convert.__main__ import main
from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.core.cli import run_cli
from tinyllama.core.fs import MARKS

CFG = GGUF_MODELS["mha4-tied"]
MEMORY_LIMIT = 6 << 30  # a run that tried to allocate for an absurd config would die here, not take the machine


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("good"), CFG)


# ------------------------------------------------------------------------------------------- helpers


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under `roots`: a file's sha256, 'dir' for a directory."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            found[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def debris(*roots: Path) -> list[str]:
    return [str(p) for root in roots for p in root.rglob(".*") if any(mark in p.name for mark in MARKS)]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def convert_cli(*args) -> subprocess.CompletedProcess:
    """`python -m convert ...` in a fresh process, as a user runs it, with bounded memory."""
    return subprocess.run(
        [sys.executable, "-m", "convert", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_memory,
    )


def refused(roots: tuple[Path, ...], args, *needles: str) -> str:
    """Run the CLI; assert the one-line contract and that nothing under `roots` changed."""
    before = snapshot(*roots)
    result = convert_cli(*args)
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("error: "), err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    assert snapshot(*roots) == before
    assert not debris(*roots)
    return err.strip()


def refused_in_process(capsys, roots: tuple[Path, ...], args, *needles: str) -> str:
    """The same contract in this process (where a test needs to patch something)."""
    before = snapshot(*roots)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main([str(a) for a in args]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    assert snapshot(*roots) == before
    assert not debris(*roots)
    return err.strip()


def hf_copy(good: Path, d: Path, config=None, weights=None) -> Path:
    """A copy of the good checkpoint with config.json and/or the weights edited."""
    src = d / "src"
    shutil.copytree(good, src)
    if config:
        edited = json.loads((src / "config.json").read_text())
        config(edited)
        (src / "config.json").write_text(json.dumps(edited))
    if weights:
        tensors = load_file(src / "model.safetensors")
        weights(tensors)
        save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    return src


def sharded(good: Path, d: Path, edit_shard=None, edit_index=None) -> Path:
    """The good checkpoint as two shards plus model.safetensors.index.json, optionally damaged."""
    src = d / "sharded"
    shutil.copytree(good, src)
    tensors = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, members in shards.items():
        part = {n: tensors[n] for n in members}
        if edit_shard and shard.startswith("model-00002"):
            edit_shard(part)
        save_file(part, src / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: s for s, members in shards.items() for n in members}}
    if edit_index:
        edit_index(index)
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    return src


class Touch:
    """Unpickling this creates `marker`: a pickle that must never be opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Touch(marker)))
    return path


def gguf_of(good: Path, path: Path, cfg=CFG, edit=None, weights=None, dtype="f32", pre=None) -> Path:
    """A GGUF written with our exporter's pieces: metadata from `cfg` (may lie), tensors optionally edited."""
    from tinyllama.convert.gguf_export import gguf_tensors, write_gguf
    from tinyllama.convert.gguf_tokenizer import vocab_from_tokenizer_dir
    from tinyllama.core.model_files import load_weights

    tensors = gguf_tensors(CFG, weights or load_weights(good), dtype)
    if edit:
        tensors = edit(tensors)
    vocab = vocab_from_tokenizer_dir(good, CFG.vocab_size)
    vocab.pre = pre or vocab.pre
    write_gguf(path, cfg, tensors, vocab, dtype, "t")
    return path


def gguf_string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def raw_gguf(path: Path, n_tensors: int, entries: list[bytes]) -> Path:
    """A GGUF v3 header written byte by byte (counts the gguf writer would never produce)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(entries) + 1)
    arch = gguf_string("general.architecture") + struct.pack("<I", 8) + gguf_string("llama")
    path.write_bytes(head + arch + b"".join(entries) + b"\0" * 64)
    return path


def nan_weights(w):
    w["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan


def int_weights(w):
    w["model.norm.weight"] = np.ones(w["model.norm.weight"].shape, np.int32)


# ----------------------------------------------------------------------- bad inputs, one line each
# Each case builds its input in `d` and returns (argv, needles): the text the error line must contain.


def case_missing_src(d, good):
    return ["import", d / "gone", d / "o.ckpt"], [d / "gone", "not found"]


def case_missing_src_export_gguf(d, good):
    return ["export-gguf", d / "gone.ckpt", d / "o.gguf"], [d / "gone.ckpt", "not found"]


def case_missing_src_export_mlx(d, good):
    return ["export-mlx", d / "gone.ckpt", d / "o"], [d / "gone.ckpt", "not found"]


def case_missing_src_export_hf(d, good):
    return ["export-hf", d / "gone.ckpt", d / "o"], [d / "gone.ckpt", "not found"]


def case_missing_gguf(d, good):
    return ["import", d / "gone.gguf", d / "o.ckpt"], [d / "gone.gguf", "not found"]


def case_src_file_not_dir(d, good):
    (d / "weights.txt").write_text("x")
    return ["import", d / "weights.txt", d / "o.ckpt"], [d / "weights.txt", "not a directory"]


def case_gguf_src_is_dir(d, good):
    (d / "m.gguf").mkdir()
    return ["import", d / "m.gguf", d / "o.ckpt"], [d / "m.gguf", "not a file"]


def case_empty_dir(d, good):
    (d / "empty").mkdir()
    return ["import", d / "empty", d / "o.ckpt"], [d / "empty", "no config.json"]


def case_export_from_file(d, good):
    (d / "f.bin").write_bytes(b"\0" * 10)
    return ["export-hf", d / "f.bin", d / "o"], [d / "f.bin", "not a model directory"]


def case_export_gguf_from_empty_dir(d, good):
    (d / "empty").mkdir()
    return ["export-gguf", d / "empty", d / "o.gguf"], [d / "empty", "not a model directory"]


def case_inspect_missing(d, good):
    return ["inspect", d / "gone.ckpt"], [d / "gone.ckpt", "not found"]


def case_inspect_not_gguf(d, good):
    (d / "notes.txt").write_text("hello" * 10)
    return ["inspect", d / "notes.txt"], [d / "notes.txt", "no GGUF magic"]


def case_config_not_json(d, good):
    src = hf_copy(good, d)
    (src / "config.json").write_text("{not json")
    return ["import", src, d / "o.ckpt"], [src / "config.json", "not valid JSON"]


def case_config_binary(d, good):
    src = hf_copy(good, d)
    (src / "config.json").write_bytes(b"\xff\xfe\x00\x81garbage")
    return ["import", src, d / "o.ckpt"], [src / "config.json", "not UTF-8"]


def case_config_zero_size(d, good):
    src = hf_copy(good, d, config=lambda c: c.update(hidden_size=0))
    return ["import", src, d / "o.ckpt"], [src / "config.json", "'hidden_size' must be a positive integer, got 0"]


def case_config_missing_size(d, good):
    src = hf_copy(good, d, config=lambda c: c.pop("num_attention_heads"))
    return ["import", src, d / "o.ckpt"], [src / "config.json", "'num_attention_heads' is missing"]


def case_config_rope_scaling_wrong_type(d, good):
    src = hf_copy(good, d, config=lambda c: c.update(rope_scaling="linear"))
    return ["import", src, d / "o.ckpt"], [src / "config.json", "'rope_scaling' must be an object"]


def case_config_absurd_layers(d, good):
    src = hf_copy(good, d, config=lambda c: c.update(num_hidden_layers=10**9))
    return ["import", src, d / "o.ckpt"], [src / "model.safetensors", "far fewer than the 1,000,000,000 layers"]


def case_export_config_absurd_vocab(d, good):
    src = hf_copy(good, d, config=lambda c: c.update(vocab_size=10**12))
    return ["export-gguf", src, d / "o.gguf"], [src / "model.safetensors", "config expects (1000000000000, 64)"]


def case_config_bad_eos(d, good):
    src = hf_copy(good, d, config=lambda c: c.update(eos_token_id="</s>"))
    return ["import", src, d / "o.ckpt"], [src / "config.json", "'eos_token_id'"]


def case_pickle_only(d, good):
    src = d / "pickled"
    src.mkdir()
    shutil.copy(good / "config.json", src)
    evil_pickle(src / "pytorch_model.bin", d / "PICKLE-WAS-LOADED")
    return ["import", src, d / "o.ckpt"], [src, "pickle"]


def case_pickle_only_export(d, good):
    src = d / "pickled"
    src.mkdir()
    shutil.copy(good / "config.json", src)
    evil_pickle(src / "pytorch_model.bin", d / "PICKLE-WAS-LOADED")
    return ["export-hf", src, d / "o"], [src]


def case_pickle_only_inspect(d, good):
    src = d / "pickled"
    src.mkdir()
    shutil.copy(good / "config.json", src)
    evil_pickle(src / "pytorch_model.bin", d / "PICKLE-WAS-LOADED")
    return ["inspect", src], [src]


def case_pickle_named_safetensors(d, good):
    src = hf_copy(good, d)
    evil_pickle(src / "model.safetensors", d / "PICKLE-WAS-LOADED")
    return ["import", src, d / "o.ckpt"], [src / "model.safetensors", "truncated"]


def case_truncated_safetensors(d, good):
    src = hf_copy(good, d)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[:-1000])
    return ["import", src, d / "o.ckpt"], [src / "model.safetensors", "corrupt or truncated"]


def case_nan_weights(d, good):
    src = hf_copy(good, d, weights=nan_weights)
    return ["import", src, d / "o.ckpt"], [src / "model.safetensors", "NaN or inf"]


def case_int_weights_import(d, good):
    src = hf_copy(good, d, weights=int_weights)
    return ["import", src, d / "o.ckpt"], [src / "model.safetensors", "not floating point"]


def case_int_weights_export_hf(d, good):
    src = hf_copy(good, d, weights=int_weights)
    return ["export-hf", src, d / "o"], [src / "model.safetensors", "not floating point"]


def case_int_weights_export_gguf(d, good):
    src = hf_copy(good, d, weights=int_weights)
    return ["export-gguf", src, d / "o.gguf"], [src / "model.safetensors", "not floating point"]


def case_int_weights_export_mlx(d, good):
    src = hf_copy(good, d, weights=int_weights)
    return ["export-mlx", src, d / "o", "--q-group-size", "32"], [src / "model.safetensors", "not floating point"]


def case_bf16_cast_overflow(d, good):
    src = hf_copy(good, d, weights=lambda w: w["model.norm.weight"].__setitem__(0, 3.4e38))
    return ["import", src, d / "o.ckpt", "--dtype", "bfloat16"], [src, "model.norm.weight", "overflows bfloat16"]


def case_shard_truncated(d, good):
    src = sharded(good, d)
    shard = src / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-500])
    return ["import", src, d / "o.ckpt"], [shard, "corrupt or truncated"]


def case_shard_nan(d, good):
    src = sharded(good, d, edit_shard=lambda part: next(v for v in part.values() if v.ndim == 2).__setitem__(0, np.inf))
    return ["import", src, d / "o.ckpt"], [src / "model-00002-of-00002.safetensors", "NaN or inf"]


def case_shard_missing(d, good):
    src = sharded(good, d)
    (src / "model-00001-of-00002.safetensors").unlink()
    return ["import", src, d / "o.ckpt"], [src, "model-00001-of-00002.safetensors", "missing"]


def case_shard_outside(d, good):
    def outside(index):
        index["weight_map"] = {n: "../outside.safetensors" for n in index["weight_map"]}

    src = sharded(good, d, edit_index=outside)
    shutil.copy(good / "model.safetensors", d / "outside.safetensors")
    return ["import", src, d / "o.ckpt"], [src, "outside the model directory"]


def case_bad_tokenizer_json(d, good):
    src = hf_copy(good, d)
    (src / "tokenizer.json").write_text('{"model": 12}')
    return ["import", src, d / "o.ckpt"], [src / "tokenizer.json", "not a valid tokenizer"]


def case_q_bits(d, good):
    return ["export-mlx", good, d / "o", "--q-bits", "7"], ["--q-bits 7"]


def case_q_group_size(d, good):
    return ["export-mlx", good, d / "o", "--q-group-size", "7"], ["--q-group-size 7"]


def case_unknown_dtype_gguf(d, good):
    return ["export-gguf", good, d / "o.gguf", "--dtype", "q4"], ["--dtype", "'q4'"]


def case_unknown_dtype_import(d, good):
    return ["import", good, d / "o.ckpt", "--dtype", "float16"], ["--dtype", "'float16'"]


def case_unknown_dtype_hf(d, good):
    return ["export-hf", good, d / "o", "--dtype", "int8"], ["--dtype", "'int8'"]


def case_out_exists_import(d, good):
    (d / "taken.ckpt").mkdir()
    (d / "taken.ckpt" / "keep.txt").write_text("mine")
    return ["import", good, d / "taken.ckpt"], [d / "taken.ckpt", "--force"]


def case_out_exists_gguf(d, good):
    (d / "taken.gguf").write_text("mine")
    return ["export-gguf", good, d / "taken.gguf"], [d / "taken.gguf", "--force"]


def case_out_exists_mlx(d, good):
    (d / "taken").mkdir()
    return ["export-mlx", good, d / "taken", "--q-group-size", "32"], [d / "taken", "--force"]


def case_out_exists_hf(d, good):
    (d / "taken").mkdir()
    return ["export-hf", good, d / "taken"], [d / "taken", "--force"]


def case_out_parent_is_file(d, good):
    (d / "plain").write_text("x")
    return ["import", good, d / "plain" / "sub" / "o.ckpt"], [d / "plain", "is a file, not a directory"]


def case_out_parent_is_file_gguf(d, good):
    (d / "plain").write_text("x")
    return ["export-gguf", good, d / "plain" / "o.gguf"], [d / "plain", "is a file, not a directory"]


def case_force_dir_over_file(d, good):
    (d / "o.ckpt").write_text("a file")
    return ["import", good, d / "o.ckpt", "--force"], [d / "o.ckpt", "is a file and the output is a directory"]


def case_force_file_over_dir(d, good):
    (d / "o.gguf").mkdir()
    (d / "o.gguf" / "keep.txt").write_text("mine")
    return ["export-gguf", good, d / "o.gguf", "--force"], [d / "o.gguf", "is a directory and the output is a file"]


def case_out_is_the_source(d, good):
    src = hf_copy(good, d)
    return ["import", src, src, "--force"], [src, "is the input"]


def case_out_holds_the_source(d, good):
    return ["export-hf", good, good.parent, "--force"], [good.parent, "is the input"]


def case_gguf_truncated(d, good):
    path = gguf_of(good, d / "m.gguf")
    path.write_bytes(path.read_bytes()[:-1000])
    return ["import", path, d / "o.ckpt"], [path, "is truncated: tensor"]


def case_gguf_empty_file(d, good):
    (d / "m.gguf").write_bytes(b"")
    return ["import", d / "m.gguf", d / "o.ckpt"], [d / "m.gguf", "not a GGUF file"]


def case_gguf_other_architecture(d, good):
    import gguf

    writer = gguf.GGUFWriter(d / "qwen.gguf", "qwen2")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return ["import", d / "qwen.gguf", d / "o.ckpt"], [d / "qwen.gguf", "unsupported GGUF architecture 'qwen2'"]


def case_gguf_nan(d, good):
    from tinyllama.core.model_files import load_weights

    weights = load_weights(good)
    weights["model.layers.0.mlp.down_proj.weight"][1, 1] = np.nan
    path = gguf_of(good, d / "m.gguf", weights=weights)
    return ["import", path, d / "o.ckpt"], [path, "blk.0.ffn_down.weight", "NaN or inf after dequantization"]


def case_gguf_nan_q8_scale(d, good):
    """A Q8_0 block whose fp16 scale is NaN: only dequantization shows it."""
    from gguf import GGMLQuantizationType as Q

    def poison(tensors):
        out = []
        for name, data, qtype in tensors:
            if name == "blk.1.attn_q.weight":
                assert qtype == Q.Q8_0
                data = data.copy()
                data[0, 0:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
            out.append((name, data, qtype))
        return out

    path = gguf_of(good, d / "m.gguf", edit=poison, dtype="q8_0")
    return ["import", path, d / "o.ckpt"], [path, "blk.1.attn_q.weight", "NaN or inf"]


def case_gguf_int_tensor(d, good):
    from gguf import GGMLQuantizationType as Q

    def to_int(tensors):
        return [(n, x.astype(np.int32), Q.I32) if n == "output_norm.weight" else (n, x, q) for n, x, q in tensors]

    path = gguf_of(good, d / "m.gguf", edit=to_int)
    return ["import", path, d / "o.ckpt"], [path, "output_norm.weight", "not floating point"]


def case_gguf_missing_tensor(d, good):
    path = gguf_of(good, d / "m.gguf", edit=lambda t: t[:-1])
    return ["import", path, d / "o.ckpt"], [path, "missing tensor"]


def case_gguf_extra_tensor(d, good):
    from gguf import GGMLQuantizationType as Q

    path = gguf_of(good, d / "m.gguf", edit=lambda t: [*t, ("blk.0.attn_q.bias", np.zeros(64, np.float32), Q.F32)])
    return ["import", path, d / "o.ckpt"], [path, "blk.0.attn_q.bias"]


def case_gguf_misshaped(d, good):
    path = gguf_of(good, d / "m.gguf", cfg=replace(CFG, d_ff=128))
    return ["import", path, d / "o.ckpt"], [path, "'blk.0.ffn_gate.weight' has shape (96, 64)"]


def case_gguf_zero_size(d, good):
    path = gguf_of(good, d / "m.gguf", cfg=replace(CFG, d_model=0))
    return ["import", path, d / "o.ckpt"], [path, "'llama.embedding_length' must be a positive integer, got 0"]


def case_gguf_absurd_layers(d, good):
    path = gguf_of(good, d / "m.gguf", cfg=replace(CFG, n_layers=10**9))
    return ["import", path, d / "o.ckpt"], [path, "1,000,000,000 layers"]


def case_gguf_absurd_vocab(d, good):
    path = gguf_of(good, d / "m.gguf", cfg=replace(CFG, vocab_size=2**31))
    return ["import", path, d / "o.ckpt"], [path, "300 tokens but vocab_size 2147483648"]


def case_gguf_unexpected_tensor(d, good):
    from gguf import GGMLQuantizationType as Q

    extra = ("blk.0.attn_extra.weight", np.zeros((4, 64), np.float32), Q.F32)
    path = gguf_of(good, d / "m.gguf", edit=lambda t: [*t, extra])
    return ["import", path, d / "o.ckpt"], [path, "unexpected tensor 'blk.0.attn_extra.weight'"]


def case_gguf_absurd_array(d, good):
    tokens = gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2**40)  # 2**40 strings
    path = raw_gguf(d / "m.gguf", 0, [tokens])
    return ["import", path, d / "o.ckpt"], [path, "more than the remaining"]


def case_gguf_absurd_tensor_count(d, good):
    path = raw_gguf(d / "m.gguf", 2**62, [])
    return ["inspect", path], [path, "tensor count"]


def case_gguf_unknown_pre_tokenizer(d, good):
    path = gguf_of(good, d / "m.gguf", pre="mystery")
    return ["import", path, d / "o.ckpt"], [path, "unknown tokenizer.ggml.pre 'mystery'", "--tokenizer DIR"]


def case_gguf_token_count(d, good):
    path = gguf_of(good, d / "m.gguf", cfg=replace(CFG, vocab_size=301))
    return ["import", path, d / "o.ckpt"], [path, "300 tokens but vocab_size 301"]


CASES = {name.removeprefix("case_"): fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, tmp_path, good):
    argv, needles = CASES[name](tmp_path, good)
    refused((tmp_path, good.parent), argv, *needles)
    assert not (tmp_path / "PICKLE-WAS-LOADED").exists()


def test_the_pickle_probe_really_runs_code_when_unpickled(tmp_path):
    """Proof that the pickle cases would notice a load: unpickling this file creates the marker."""
    path = evil_pickle(tmp_path / "probe.bin", tmp_path / "probe-marker")
    pickle.loads(path.read_bytes()).close()
    assert (tmp_path / "probe-marker").exists()


# ------------------------------------------------------------------------------ remote code is ignored


@pytest.mark.slow
def test_auto_map_and_trust_remote_code_are_ignored(tmp_path, good):
    """A directory asking for its own code imports, exports and inspects as plain Llama; its code never
    runs, is never copied, and no output carries auto_map."""
    src = tmp_path / "remote"
    shutil.copytree(good, src)
    marker = tmp_path / "CODE-RAN"
    (src / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w')\nclass Evil: pass\n")
    (src / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w')\nclass Evil: pass\n")
    config = json.loads((src / "config.json").read_text())
    config.update(auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"}, trust_remote_code=True)
    (src / "config.json").write_text(json.dumps(config))
    tok = json.loads((src / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.Evil", None]}
    (src / "tokenizer_config.json").write_text(json.dumps(tok))

    outs = [tmp_path / "o.ckpt", tmp_path / "o.gguf", tmp_path / "hf", tmp_path / "mlx"]
    for args in (
        ["import", src, outs[0]],
        ["export-gguf", src, outs[1]],
        ["export-hf", src, outs[2]],
        ["export-mlx", src, outs[3], "--q-group-size", "32", "--q-bits", "8"],
        ["inspect", src],
    ):
        result = convert_cli(*args)
        assert result.returncode == 0, result.stderr
    assert not marker.exists()
    for out in (outs[0], outs[2], outs[3]):
        assert not list(out.glob("*.py")), out
        for file in out.glob("*.json"):
            assert "auto_map" not in json.loads(file.read_text()), file


# --------------------------------------------------------------------- read-only and full locations


@contextlib.contextmanager
def mounted(target: Path, *commands: list[str]):
    """Run mount `commands` for `target`; skip with the reason when mounting is not permitted; always unmount."""
    target.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("cannot mount: no mount command")
    mounted_once = False
    try:
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                pytest.skip(f"cannot mount {target}: {(result.stderr or result.stdout).strip()}")
            mounted_once = True
        yield target
    finally:
        if mounted_once and subprocess.run(["umount", str(target)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)  # busy: detach it anyway


def read_only(tmp_path: Path):
    src, view = tmp_path / "writable", tmp_path / "ro"
    src.mkdir()
    return src, mounted(view, ["mount", "--bind", str(src), str(view)], ["mount", "-o", "remount,ro,bind", str(view)])


def small_disk(path: Path, size: str = "1m"):
    return mounted(path, ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])


@pytest.mark.slow
def test_read_only_output_is_refused_before_the_work(tmp_path, good):
    src, ctx = read_only(tmp_path)
    (src / "existing.gguf").write_bytes(b"an older export")
    (src / "existing.ckpt").mkdir()
    (src / "existing.ckpt" / "config.json").write_text("{}")
    with ctx as ro:
        roots = (ro, good.parent)
        refused(roots, ["import", good, ro / "new.ckpt"], ro / "new.ckpt", "Read-only file system")
        refused(roots, ["export-gguf", good, ro / "sub" / "m.gguf"], ro / "sub" / "m.gguf", "Read-only")
        refused(roots, ["export-gguf", good, ro / "existing.gguf", "--force"], ro / "existing.gguf", "Read-only")
        refused(roots, ["import", good, ro / "existing.ckpt", "--force"], ro / "existing.ckpt", "Read-only")


@pytest.mark.slow
def test_full_disk_is_refused_before_the_work_and_keeps_the_old_output(tmp_path, good):
    from tinyllama.convert.hf_import import import_hf

    with small_disk(tmp_path / "disk") as disk:
        import_hf(good, disk / "m.ckpt")  # fits: 360 kB of weights on 1 MB
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as filler:
            for _ in range(1024):
                filler.write(b"\0" * 4096)
                filler.flush()
        roots = (disk, good.parent)
        refused(roots, ["import", good, disk / "m.ckpt", "--force"], disk / "m.ckpt", "free some space")
        refused(roots, ["export-gguf", good, disk / "m.gguf"], disk / "m.gguf", "free some space")
        refused(roots, ["export-hf", good, disk / "hf"], disk / "hf", "needs at least")


@pytest.mark.parametrize(
    "argv",
    [
        ["import", "{good}", "{out}", "--force"],
        ["export-gguf", "{good}", "{out}.gguf", "--force"],
        ["export-hf", "{good}", "{out}", "--force"],
    ],
    ids=["import", "export-gguf", "export-hf"],
)
def test_disk_full_mid_write_leaves_no_debris_and_the_old_output_intact(argv, capsys, tmp_path, good, monkeypatch):
    """The free-space check is switched off so the write itself hits ENOSPC on a real 1 MB tmpfs."""
    from tinyllama.convert import common as convert_common

    monkeypatch.setattr(convert_common, "free_bytes", lambda path: 1 << 40)
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "m"
        existing = Path(argv[2].format(out=out))
        if argv[0] == "export-gguf":
            existing.write_bytes(b"an older export " * 100)
        else:
            existing.mkdir()
            (existing / "config.json").write_text('{"older": true}')
        with open(disk / "filler", "wb") as filler:
            filler.write(b"\0" * 900_000)
        args = [a.format(good=good, out=out) for a in argv]
        err = refused_in_process(capsys, (disk, good.parent), args, existing, "writing failed", "free some space")
        assert "No space left on device" in err


@pytest.mark.slow
def test_export_mlx_disk_full_mid_write(capsys, tmp_path, good, monkeypatch):
    from tinyllama.convert import common as convert_common

    monkeypatch.setattr(convert_common, "free_bytes", lambda path: 1 << 40)
    with small_disk(tmp_path / "disk", "64k") as disk:
        args = ["export-mlx", good, disk / "mlx", "--q-group-size", "32", "--q-bits", "8"]
        refused_in_process(capsys, (disk, good.parent), args, disk / "mlx", "writing failed")


def test_output_folders_made_for_a_failed_write_are_removed(capsys, tmp_path, good, monkeypatch):
    from tinyllama.convert import common as convert_common

    monkeypatch.setattr(convert_common, "free_bytes", lambda path: 1 << 40)
    with small_disk(tmp_path / "disk", "64k") as disk:
        refused_in_process(capsys, (disk, good.parent), ["export-hf", good, disk / "a" / "b" / "hf"], "writing failed")
        assert not (disk / "a").exists()


# --------------------------------------------------------------------------------- what is verified


def test_import_of_a_sharded_directory_is_verified_and_exact(tmp_path, good):
    from tinyllama.convert.hf_import import import_hf
    from tinyllama.core.model_files import load_weights

    out = import_hf(sharded(good, tmp_path), tmp_path / "o.ckpt")
    source, imported = load_weights(good), load_weights(out)
    assert source.keys() == imported.keys()
    assert all(np.array_equal(source[k], imported[k]) for k in source)


def test_gguf_import_verifies_before_writing_and_output_is_finite(tmp_path, good):
    from tinyllama.convert.gguf_import import import_gguf
    from tinyllama.core.model_files import load_weights

    out = import_gguf(gguf_of(good, tmp_path / "m.gguf", dtype="q8_0"), tmp_path / "o.ckpt")
    weights = load_weights(out)  # core's loader checks names, shapes, dtypes and finiteness again
    assert weights.keys() == load_weights(good).keys()


def test_export_refuses_weights_that_would_not_survive_the_cast(tmp_path, good, capsys):
    weights = random_weights(CFG)
    weights["model.layers.0.mlp.up_proj.weight"][0, 0] = 1e6
    big = save_checkpoint(tmp_path / "big.ckpt", weights, CFG, tokenizer_dir=good)
    refused_in_process(capsys, (tmp_path,), ["export-hf", big, tmp_path / "r", "--dtype", "fp16"], big, "fp16")
    refused_in_process(capsys, (tmp_path,), ["export-gguf", big, tmp_path / "r.gguf"], big, "fp16")
