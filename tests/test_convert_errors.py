"""Bad input: one line on stderr naming the problem and the fix, exit code 2, nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import GGUF_MODELS, make_checkpoint, random_weights, run_convert, write_word_tokenizer
from safetensors.numpy import load_file, save_file

from tinyllama.convert.__main__ import main
from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.core.cli import run_cli
from tinyllama.core.config import ModelConfig

CFG = GGUF_MODELS["mha4-tied"]


def convert_fails(capsys, tmp_path, *argv) -> str:
    """Run the CLI in-process; assert exit 2, a single `error:` line, and no new file under tmp_path."""
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main([str(a) for a in argv]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written, no temp left
    return err


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("good"), CFG)


def _hf_dir(tmp_path, good, edit_config=None, edit_weights=None):
    src = tmp_path / "src"
    shutil.copytree(good, src)
    if edit_config:
        config = json.loads((src / "config.json").read_text())
        edit_config(config)
        (src / "config.json").write_text(json.dumps(config))
    if edit_weights:
        weights = load_file(src / "model.safetensors")
        edit_weights(weights)
        save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    return src


@pytest.mark.parametrize(
    "edit_config,edit_weights,message",
    [
        (lambda c: c.update(model_type="gpt2"), None, "unsupported model_type 'gpt2'"),
        (lambda c: c.update(architectures=["LlamaForSequenceClassification"]), None, "unsupported architecture"),
        (lambda c: c.update(rope_parameters={"rope_type": "llama3", "factor": 8.0}), None, "RoPE scaling 'llama3'"),
        (lambda c: c.update(attention_bias=True), None, "attention biases"),
        (lambda c: c.update(quantization_config={"bits": 4}), None, "quantized weights"),
        (lambda c: c.update(num_key_value_heads=3), None, "multiple of model.n_kv_heads"),
        (None, lambda w: w.pop("model.layers.1.mlp.up_proj.weight"), "missing tensor 'model.layers.1.mlp.up_proj"),
        (None, lambda w: w.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}), "bias"),
        (lambda c: c.update(intermediate_size=128), None, "has shape (96, 64), config expects (128, 64)"),
    ],
)
def test_import_refuses_what_it_cannot_load(capsys, tmp_path, good, edit_config, edit_weights, message):
    src = _hf_dir(tmp_path, good, edit_config, edit_weights)
    err = convert_fails(capsys, tmp_path, "import", src, tmp_path / "out.ckpt")
    assert message in err


def test_import_refuses_corrupt_and_pickle_weights(capsys, tmp_path, good):
    src = _hf_dir(tmp_path, good)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in convert_fails(capsys, tmp_path, "import", src, tmp_path / "o.ckpt")
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    assert "safetensors only" in convert_fails(capsys, tmp_path, "import", src, tmp_path / "o.ckpt")
    assert "not found" in convert_fails(capsys, tmp_path, "import", tmp_path / "nope.gguf", tmp_path / "o.ckpt")


def test_gguf_import_refuses_damaged_and_foreign_files(capsys, tmp_path, good):
    import gguf

    from tinyllama.convert.gguf_export import export_gguf

    export_gguf(good, tmp_path / "m.gguf", dtype="f32")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.gguf").write_bytes(b"definitely not gguf" * 100)
    assert "is truncated: tensor" in convert_fails(capsys, tmp_path, "import", tmp_path / "cut.gguf", tmp_path / "o")
    assert "no GGUF magic" in convert_fails(capsys, tmp_path, "import", tmp_path / "junk.gguf", tmp_path / "o")

    from dataclasses import replace

    from tinyllama.convert.gguf_export import gguf_tensors, write_gguf
    from tinyllama.convert.gguf_tokenizer import vocab_from_tokenizer_dir
    from tinyllama.core.model_files import load_weights

    vocab = vocab_from_tokenizer_dir(good, CFG.vocab_size)
    tensors = gguf_tensors(CFG, load_weights(good), "f32")
    write_gguf(tmp_path / "short.gguf", CFG, tensors[:-1], vocab, "f32", "short")
    write_gguf(tmp_path / "wide.gguf", replace(CFG, d_ff=128), tensors, vocab, "f32", "wide")
    err = convert_fails(capsys, tmp_path, "import", tmp_path / "short.gguf", tmp_path / "o.ckpt")
    assert "missing tensor 'output_norm.weight' (1 missing)" in err
    err = convert_fails(capsys, tmp_path, "import", tmp_path / "wide.gguf", tmp_path / "o.ckpt")
    assert "tensor 'blk.0.ffn_gate.weight' has shape (96, 64), the metadata implies (128, 64)" in err

    writer = gguf.GGUFWriter(tmp_path / "qwen.gguf", "qwen2")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    err = convert_fails(capsys, tmp_path, "import", tmp_path / "qwen.gguf", tmp_path / "o.ckpt")
    assert "unsupported GGUF architecture 'qwen2'" in err


def test_exports_refuse_bad_requests(capsys, tmp_path, good):
    (tmp_path / "taken.gguf").write_bytes(b"keep me")
    assert "--force" in convert_fails(capsys, tmp_path, "export-gguf", good, tmp_path / "taken.gguf")
    assert (tmp_path / "taken.gguf").read_bytes() == b"keep me"

    words = ModelConfig(vocab_size=97, n_layers=1, d_model=48, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)
    tok = write_word_tokenizer(tmp_path / "words", 97)
    ckpt = save_checkpoint(tmp_path / "w.ckpt", random_weights(words), words, tokenizer_dir=tok)
    assert "byte-level BPE" in convert_fails(capsys, tmp_path, "export-gguf", ckpt, tmp_path / "w.gguf")
    err = convert_fails(capsys, tmp_path, "export-mlx", ckpt, tmp_path / "w-mlx", "--q-group-size", "64")
    assert "not a multiple of --q-group-size 64" in err
    assert "checkpoint not found" in convert_fails(
        capsys, tmp_path, "export-hf", tmp_path / "none.ckpt", tmp_path / "r"
    )

    huge = random_weights(CFG)
    huge["model.norm.weight"][0] = 1e6
    big = save_checkpoint(tmp_path / "big.ckpt", huge, CFG, tokenizer_dir=good)
    assert "beyond fp16's range" in convert_fails(capsys, tmp_path, "export-hf", big, tmp_path / "r", "--dtype", "fp16")


@pytest.mark.slow
def test_subprocess_error_is_one_line_exit_2(tmp_path):
    result = run_convert("import", tmp_path / "missing-dir", tmp_path / "out.ckpt")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert not (tmp_path / "out.ckpt").exists()
