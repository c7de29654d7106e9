"""llama.cpp itself (via llama-cpp-python, when installed) loads our GGUF exports: same tokens, same logits.

llama-cpp-python builds llama.cpp from source (~20 min on 2 cores), so it is not a requirement; these
tests skip without it. Measured results are in docs/convert.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import GGUF_MODELS, TEXT, make_checkpoint

from tinyllama.convert.gguf_export import export_gguf
from tinyllama.torch_model.state import load_model as load_torch

llama_cpp = pytest.importorskip("llama_cpp")

# llama.cpp keeps its KV cache in f16 and quantizes activations for q8_0 dot products: measured max |diff|
# f32 2.2e-3, f16 3.8e-3, bf16 3.5e-2, q8_0 9.7e-2 on logits of max |3.5|
TOLERANCE = {"f32": 0.01, "f16": 0.01, "bf16": 0.08, "q8_0": 0.2}


def _llama(path):
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, verbose=False, n_threads=2)


@pytest.mark.parametrize("name", sorted(GGUF_MODELS))
@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_llama_cpp_runs_our_export(tmp_path, name, dtype):
    from tokenizers import Tokenizer

    ckpt = make_checkpoint(tmp_path, GGUF_MODELS[name])
    text = TEXT[1]
    ids = Tokenizer.from_file(str(ckpt / "tokenizer.json")).encode(text).ids
    model, _ = load_torch(ckpt)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).numpy()[0]

    llm = _llama(export_gguf(ckpt, tmp_path / "m.gguf", dtype=dtype))
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids  # tokenizer.ggml.pre "gpt-2" honoured
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    assert np.abs(got - expected).max() < TOLERANCE[dtype]
