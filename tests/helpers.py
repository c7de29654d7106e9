"""What several test files share: tiny model shapes, weights and tokenizers, checkpoints, reference
losses, and running the trainers and the converter the way a user does. Plain functions (fixtures
stay in conftest.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tinyllama.core.architecture import init_weights
from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.core.config import ModelConfig
from tinyllama.core.model_files import load_weights

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")

# Shapes the parity tests sweep: GQA and MHA/MQA, tied and untied, odd vocab, explicit head_dim.
TINY_MODELS = {
    "gqa8x2-tied": ModelConfig(
        vocab_size=97, n_layers=2, d_model=64, n_heads=8, n_kv_heads=2, d_ff=96, max_seq_len=128
    ),
    "mha4-untied": ModelConfig(
        vocab_size=131, n_layers=2, d_model=32, n_heads=4, n_kv_heads=4, d_ff=64, tie_embeddings=False, max_seq_len=128
    ),
    "mqa-headdim-theta": ModelConfig(
        vocab_size=101,
        n_layers=3,
        d_model=48,
        n_heads=4,
        n_kv_heads=1,
        d_ff=80,
        head_dim=16,
        rope_theta=500000.0,
        max_seq_len=128,
    ),
    "gqa6x3-untied-eps": ModelConfig(
        vocab_size=257,
        n_layers=2,
        d_model=48,
        n_heads=6,
        n_kv_heads=3,
        d_ff=77,
        norm_eps=1e-6,
        tie_embeddings=False,
        max_seq_len=128,
    ),
}


# The architecture switches (core.architecture.SWITCHES) on tiny shapes: GQA with QK-norm, ...
VARIANT_MODELS = {  # vocab 320: above the byte-level BPE tokenizer the GGUF tests give them (write_bpe_tokenizer)
    "gqa8x2-qk_norm": dataclasses.replace(TINY_MODELS["gqa8x2-tied"], vocab_size=320, qk_norm=True),
    "mqa-headdim128-qk_norm-untied": dataclasses.replace(  # real Qwen3 models' head_dim (see tests/test_formats.py)
        TINY_MODELS["mqa-headdim-theta"], vocab_size=320, head_dim=128, qk_norm=True, tie_embeddings=False
    ),
    "mha4-relu2-untied": dataclasses.replace(TINY_MODELS["mha4-untied"], vocab_size=320, mlp="relu2", d_ff=96),
    "gqa8x2-relu2-qk_norm": dataclasses.replace(TINY_MODELS["gqa8x2-tied"], vocab_size=320, mlp="relu2", qk_norm=True),
    "gqa6x3-softcap": dataclasses.replace(TINY_MODELS["gqa6x3-untied-eps"], vocab_size=320, logit_softcap=2.0),
    "gqa8x2-zero-init": dataclasses.replace(TINY_MODELS["gqa8x2-tied"], vocab_size=320, zero_init_residual=True),
}


def random_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Init weights made sharper (x5), norm gains perturbed: a wrong norm placement or q/k permutation
    cannot hide behind ones, and attention carries real signal."""
    weights = init_weights(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    for name, value in weights.items():
        if value.ndim == 1:
            weights[name] = (1 + 0.2 * rng.standard_normal(value.shape)).astype(np.float32)
        else:
            weights[name] = (value * 5).astype(np.float32)
    return weights


def tokens_for(cfg: ModelConfig, batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(batch, length))


def torch_cross_entropy(logits, targets):
    """The plain reference loss (torch): mean cross-entropy of full fp32 logits."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten().long())


def mlx_cross_entropy(logits, targets):
    """The plain reference loss (MLX): mean cross-entropy of full fp32 logits."""
    import mlx.core as mx
    import mlx.nn as nn

    return nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="mean")


def write_word_tokenizer(directory: Path, vocab_size: int) -> Path:
    """A whitespace word-level tokenizer with `vocab_size` ids that transformers and mlx_lm both load."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------------- convert

TEXT = [
    "The quick brown fox jumps over the lazy dog. The capital of France is Paris.",
    "In 2024 the model read 12345 tokens; it said: hello world, hello again!",
    "Small models learn quickly, and tiny tests run in seconds on two cores.",
] * 20

# GGUF-friendly tiny shapes: rows a multiple of 32 for q8_0, vocab above the tokenizer's size (padding).
GGUF_MODELS = {
    "gqa4x2-untied-headdim": ModelConfig(
        vocab_size=320,
        n_layers=2,
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        d_ff=128,
        head_dim=32,
        rope_theta=500000.0,
        norm_eps=1e-6,
        tie_embeddings=False,
        max_seq_len=128,
    ),
    "mha4-tied": ModelConfig(
        vocab_size=300,
        n_layers=2,
        d_model=64,
        n_heads=4,
        n_kv_heads=4,
        d_ff=96,
        max_seq_len=128,
    ),
}


def write_bpe_tokenizer(directory: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE trained on TEXT, saved as a PreTrainedTokenizerFast directory (GGUF can carry it)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TEXT, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(directory)
    return directory


def make_checkpoint(tmp: Path, cfg: ModelConfig, name: str = "m.ckpt", seed: int = 0) -> Path:
    tok = write_bpe_tokenizer(tmp / f"tok-{name}")
    state = {"step": 120, "tokens_seen": 245760, "backend": "mlx", "loss": 3.25, "lr": 3e-4}
    return save_checkpoint(
        tmp / name,
        random_weights(cfg, seed),
        cfg,
        tokenizer_dir=tok,
        trainer_state=state,
        bos_token_id=0,
        eos_token_id=0,
    )


def greedy_torch(model, tokens: list[int], steps: int) -> list[int]:
    """Greedy decoding with our torch model's KV cache: prefill once, then one token at a time."""
    import torch

    cache, out = model.make_cache(), []
    with torch.no_grad():
        logits = model(torch.tensor([tokens]), cache)
        for _ in range(steps):
            out.append(int(logits[0, -1].argmax()))
            logits = model(torch.tensor([[out[-1]]]), cache)
    return out


def greedy_mlx(model, tokens: list[int], steps: int) -> list[int]:
    import mlx.core as mx

    cache, out = model.make_cache(), []
    logits = model(mx.array([tokens]), cache)
    for _ in range(steps):
        out.append(int(mx.argmax(logits[0, -1]).item()))
        logits = model(mx.array([[out[-1]]]), cache)
    return out


def run_infer(argv: list[str], capsys, monkeypatch, stdin: str | io.StringIO = "") -> tuple[int, str, str]:
    """infer.py's main in this process, as the script runs it, stdin given (text, or a stream standing in for
    a terminal): (exit code, stdout, stderr)."""
    from tinyllama import infer
    from tinyllama.core.cli import run_cli

    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin) if isinstance(stdin, str) else stdin)
    try:
        run_cli(lambda: infer.main(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_convert(*args: str) -> subprocess.CompletedProcess:
    """`python -m convert ...` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "convert", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


# ------------------------------------------------------------------------------------- trainers


def smoke_argv(run_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", SMOKE,
        "--data.cache_dir", str(cache_dir),
        "--output.dir", str(run_dir / "ckpt"),
        "--output.logs", str(run_dir / "logs"),
        "--output.run_name", "smoke",
        "--training.log_every", "1",
        *extra,
    ]  # fmt: skip


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss, from the run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "logs" / "smoke" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = load_weights(a), load_weights(b)
    return max(float(np.abs(wa[k].astype(np.float32) - wb[k].astype(np.float32)).max()) for k in wa)


def assert_same_logits_elsewhere(ckpt: Path, text: str = "The history of") -> None:
    """transformers and mlx_lm load a trained checkpoint as is and compute our model's logits (1e-4)."""
    import mlx.core as mx
    import torch
    from mlx_lm import load as mlx_lm_load
    from transformers import AutoModelForCausalLM

    from tinyllama.torch_model.state import load_model

    model, tokenizer = mlx_lm_load(str(ckpt))
    ids = tokenizer.encode(text)
    ours, _ = load_model(ckpt)
    with torch.no_grad():
        expected = ours.eval()(torch.tensor([ids])).numpy()
        hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
        got_hf = hf(torch.tensor([ids]), use_cache=False).logits.numpy()
    got_mlx = np.array(model(mx.array([ids])).astype(mx.float32))
    assert expected.shape == (1, len(ids), ours.cfg.vocab_size)
    assert np.abs(got_hf - expected).max() < 1e-4
    assert np.abs(got_mlx - expected).max() < 1e-4


def file_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root`: what "nothing changed" is checked against."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def bench_module(name: str):
    """bench/<name>.py as the module bench_<name> (bench/ stays off sys.path: its names are generic)."""
    if f"bench_{name}" not in sys.modules:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[f"bench_{name}"]


# ------------------------------------------------------------------------------------- serve.py


def word_checkpoint(tmp: Path, cfg: ModelConfig, name: str = "words.ckpt") -> Path:
    """A checkpoint whose tokenizer is whole words (w2, w3, ...; <eos> is 1): its text shows every token, so
    stop strings and streamed text are easy to check."""
    tok = write_word_tokenizer(tmp / f"tok-{name}", cfg.vocab_size)
    state = {"step": 1, "tokens_seen": 1, "backend": "torch", "loss": 1.0, "lr": 1e-3}
    return save_checkpoint(tmp / name, random_weights(cfg, 0), cfg, tokenizer_dir=tok, trainer_state=state,
                           bos_token_id=1, eos_token_id=1)  # fmt: skip


class Server:
    """`python serve.py ARGS --port 0` in a subprocess, as a user starts it: `url` once it listens."""

    def __init__(self, *args: str, log: Path, timeout: float = 180, env: dict | None = None):
        import os
        import time

        self.log = log
        command = [sys.executable, str(ROOT / "serve.py"), "--port", "0", *map(str, args)]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                                     env={**os.environ, **(env or {})})  # fmt: skip
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
            if line.startswith("serving "):
                break
        if not line.startswith("serving "):
            self.stop()
            raise RuntimeError(f"serve.py did not start: {log.read_text()[-2000:]}")
        self.url = line.split(" at ", 1)[1].split("/ ", 1)[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()
