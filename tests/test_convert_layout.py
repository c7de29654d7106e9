"""The pure helpers of the GGUF converters: the q/k permutation, GGUF tensor names, pre-tokenizer detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import GGUF_MODELS, write_bpe_tokenizer

from tinyllama.convert.gguf_layout import gguf_names, permute_qk, unpermute_qk
from tinyllama.convert.gguf_tokenizer import detect_pre
from tinyllama.core.architecture import parameter_shapes


@pytest.mark.parametrize("n_head,head_dim", [(4, 16), (3, 64), (1, 8)])
def test_permute_matches_llama_cpp_and_inverts(n_head, head_dim):
    w = np.arange(n_head * head_dim * 5, dtype=np.float32).reshape(n_head * head_dim, 5)
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim
    ref = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(permute_qk(w, n_head), ref)
    assert np.array_equal(unpermute_qk(permute_qk(w, n_head), n_head), w)
    # within a head, llama.cpp interleaves the two rotate-half halves: rows 0, d/2, 1, d/2+1, ...
    assert permute_qk(w, n_head)[1, 0] == w[head_dim // 2, 0]


def test_gguf_names_cover_every_parameter_once():
    cfg = GGUF_MODELS["gqa4x2-untied-headdim"]
    mapping = gguf_names(cfg)
    assert sorted(mapping.values()) == sorted(parameter_shapes(cfg))
    assert mapping["blk.1.attn_output.weight"] == "model.layers.1.self_attn.o_proj.weight"
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.0.ffn_down.weight"} <= set(mapping)


def test_pre_tokenizer_detection(tmp_path):
    spec = json.loads((write_bpe_tokenizer(tmp_path / "tok") / "tokenizer.json").read_text())
    assert detect_pre(spec["pre_tokenizer"]) == "gpt-2"
    smollm = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    assert detect_pre(smollm) == "smollm"
    assert detect_pre({"type": "Whitespace"}) is None
