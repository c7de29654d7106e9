"""Other tools' own commands on our checkpoints, with no conversion: mlx_lm.lora fine-tunes one and
mlx_lm.generate runs it with the adapter (docs/ecosystem.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import smoke_argv

from tinyllama.mlx_model.blas import find_openblas

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Anarchism is a political philosophy.", "Autism is a developmental disorder.", "Alabama is a state."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache) -> Path:
    run = tmp_path_factory.mktemp("eco")
    steps = ("--training.max_steps", "4", "--training.eval_every", "4", "--training.save_every", "4")
    subprocess.run([sys.executable, "train_cuda.py", *smoke_argv(run, data_cache, *steps)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    return run / "ckpt" / "final.ckpt"


def mlx_env() -> dict[str, str]:
    blas = find_openblas()  # mlx_lm's commands on Linux run at MLX's reference-BLAS speed without it
    return dict(os.environ, **({"LD_PRELOAD": blas} if blas else {}))


@pytest.mark.slow
def test_mlx_lm_lora_fine_tunes_our_checkpoint_and_generates_with_the_adapter(trained, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 12), ("valid", 4)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"text": TEXTS[i % 3]}) + "\n" for i in range(n)))
    bin_dir = Path(sys.executable).parent
    lora = [
        str(bin_dir / "mlx_lm.lora"), "--model", str(trained), "--train", "--data", str(data), "--iters", "3",
        "--batch-size", "2", "--num-layers", "2", "--max-seq-length", "64", "--steps-per-eval", "3",
        "--val-batches", "2", "--adapter-path", str(tmp_path / "adapters"),
    ]  # fmt: skip
    result = subprocess.run(lora, env=mlx_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert "Trainable parameters" in plain and (tmp_path / "adapters" / "adapters.safetensors").is_file()
    generate = [
        str(bin_dir / "mlx_lm.generate"), "--model", str(trained), "--adapter-path", str(tmp_path / "adapters"),
        "--prompt", "Alabama is", "--max-tokens", "4",
    ]  # fmt: skip
    result = subprocess.run(generate, env=mlx_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Generation: 4 tokens" in re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)


LM_EVAL_TASK = """task: tiny_wiki
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""
DOCS = [
    {"question": "Alabama is a state in the", "choices": [" United States", " ocean", " Moon"], "label": 0},
    {"question": "Anarchism is a political", "choices": [" philosophy", " river", " number"], "label": 0},
    {"question": "Aristotle was a Greek", "choices": [" philosopher", " car", " planet"], "label": 0},
]


@pytest.mark.slow
def test_lm_eval_scores_our_checkpoint_as_our_own_scorer_does(trained, tmp_path):
    """`lm_eval --model hf --model_args pretrained=CKPT` with a local multiple-choice task, offline: its
    log-likelihood of every choice equals ours (core.backend score on torch)."""
    from tinyllama.core.backend import load_backend
    from tinyllama.data.tokenizer import checkpoint_tokenizer

    (tmp_path / "test.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tiny_wiki.yaml").write_text(LM_EVAL_TASK.format(data=tmp_path / "test.jsonl"))
    command = [
        str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args",
        f"pretrained={trained},dtype=float32", "--tasks", "tiny_wiki", "--include_path", str(tmp_path),
        "--device", "cpu", "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "ds"))
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (samples,) = (tmp_path / "out").rglob("samples_tiny_wiki_*.jsonl")
    theirs = {
        (s["doc"]["question"], choice): float(resp[0])
        for s in map(json.loads, samples.read_text().splitlines())
        for choice, resp in zip(s["doc"]["choices"], s["filtered_resps"], strict=True)
    }
    tok = checkpoint_tokenizer(trained, None, 512)
    backend = load_backend("torch", trained, None, "cpu")
    pairs = [(doc["question"], choice) for doc in DOCS for choice in doc["choices"]]
    ours = backend.score([(tok.encode(q), tok.encode(c)) for q, c in pairs])
    assert len(theirs) == len(pairs) == 9
    for pair, (_, logprobs) in zip(pairs, ours, strict=True):
        assert sum(logprobs) == pytest.approx(theirs[pair], abs=1e-3), pair
