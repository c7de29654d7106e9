"""Each architecture switch where other tools can follow it: a variant a format expresses is written as that
format's own architecture (Llama + QK-norm is Qwen3) and transformers, mlx_lm and a GGUF reader compute our
logits from it unconverted; one no format expresses is refused by every exporter in one line naming the key,
and transformers refuses its config.json instead of running it wrong."""

from __future__ import annotations

import dataclasses
import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import VARIANT_MODELS, random_weights, tokens_for, write_bpe_tokenizer

from tinyllama.convert.common import ConvertError
from tinyllama.convert.gguf_export import export_gguf
from tinyllama.convert.gguf_import import load_gguf, metadata, open_reader
from tinyllama.convert.hf_export import export_hf
from tinyllama.convert.mlx_export import export_mlx
from tinyllama.core.architecture import OWN_MODEL_TYPE, architecture, no_format_for
from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.core.model_files import load_weights, read_model_config
from tinyllama.mlx_model.state import load_model as load_mlx
from tinyllama.torch_model.state import load_model as load_torch

TOL = 1e-4


@pytest.fixture(params=sorted(VARIANT_MODELS))
def variant(request, tmp_path):
    """(config, checkpoint with a tokenizer, our torch logits on tokens, tokens)."""
    cfg = VARIANT_MODELS[request.param]
    tokenizer = write_bpe_tokenizer(tmp_path / "tok")  # byte-level BPE: what GGUF can carry
    ckpt = save_checkpoint(tmp_path / "m.ckpt", random_weights(cfg, 2), cfg, tokenizer_dir=tokenizer, eos_token_id=0)
    tokens = tokens_for(cfg, 2, 19, seed=3)
    with torch.no_grad():
        logits = load_torch(ckpt)[0].eval()(torch.from_numpy(tokens)).numpy()
    assert np.abs(logits).max() > 0.1
    ours_mlx = np.array(load_mlx(ckpt)[0](mx.array(tokens)))
    assert np.abs(ours_mlx - logits).max() < TOL  # both backends read the switch back from config.json
    assert read_model_config(ckpt) == cfg
    return cfg, ckpt, logits, tokens


def test_config_json_names_the_architecture_that_computes_it(variant):
    cfg, ckpt, _, _ = variant
    hf = json.loads((ckpt / "config.json").read_text())
    assert hf["model_type"] == (architecture(cfg) or OWN_MODEL_TYPE)
    assert (hf["model_type"] == OWN_MODEL_TYPE) == bool(no_format_for(cfg))


def test_transformers_and_mlx_lm_load_an_expressible_variant_unconverted(variant):
    from mlx_lm import load as mlx_lm_load
    from transformers import AutoModelForCausalLM

    cfg, ckpt, logits, tokens = variant
    if no_format_for(cfg):
        with pytest.raises((ValueError, KeyError)):  # an unknown model_type: refused, never run as a Llama
            AutoModelForCausalLM.from_pretrained(ckpt)
        return
    hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    assert type(hf).__name__.lower().startswith(architecture(cfg))
    with torch.no_grad():
        assert np.abs(hf(torch.from_numpy(tokens), use_cache=False).logits.numpy() - logits).max() < TOL
    model, _ = mlx_lm_load(str(ckpt))
    assert np.abs(np.array(model(mx.array(tokens))) - logits).max() < TOL


def test_gguf_export_is_the_llama_cpp_architecture_or_refused(variant, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    cfg, ckpt, logits, tokens = variant
    if no_format_for(cfg):
        for export, tool in ((export_gguf, "llama.cpp"), (export_hf, "transformers"), (export_mlx, "mlx_lm")):
            with pytest.raises(ConvertError, match=f"{tool} has no architecture for model\\."):
                export(ckpt, tmp_path / "out")
        assert not (tmp_path / "out").exists()
        return
    out = export_gguf(ckpt, tmp_path / "m.gguf", dtype="f32")
    meta = metadata(open_reader(out))
    arch = architecture(cfg)
    assert meta["general.architecture"] == arch
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH[arch.upper()]]}
    names = {t.name.removesuffix(".weight") for t in open_reader(out).tensors}
    assert {name.replace(name.split(".")[1], "{bid}") if name.startswith("blk.") else name for name in names} <= known
    imported_cfg, weights, _ = load_gguf(out)
    how_initialised = {"init_std": cfg.init_std, "zero_init_residual": cfg.zero_init_residual}  # no GGUF keys
    assert dataclasses.replace(imported_cfg, **how_initialised) == cfg
    assert all(np.array_equal(weights[k], v) for k, v in load_weights(ckpt).items())
    if arch == "qwen3" and cfg.resolved_head_dim != 128:
        return  # transformers' GGUF reader does not read qwen3's attention.key_length: it assumes 128, as in Qwen3
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        assert np.abs(hf(torch.from_numpy(tokens), use_cache=False).logits.numpy() - logits).max() < TOL
