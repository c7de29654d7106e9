"""A Hugging Face Llama model directory -> our checkpoint (same names; checked, cast, tokenizer copied).

The state dict already uses HF names, so the work is refusing what would load wrongly: another
model_type, biases, RoPE scaling, quantized or pickle-only weights, missing or mis-shaped tensors.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from convert.common import (
    ConvertError,
    cast_weights,
    check_model_config,
    check_output,
    tokenizer_dir_arg,
)
from core.checkpoint import TOKENIZER_FILES, load_weights, read_json_object, save_checkpoint
from core.config import ConfigError, ModelConfig
from core.hf_config import from_hf_config
from core.weights import runtime_dtype


def read_source_config(src: Path) -> tuple[dict[str, Any], ModelConfig]:
    """The source's config.json and our ModelConfig for it, or one line saying why it cannot be imported."""
    if not src.is_dir():
        raise ConvertError(f"{src} is not a directory; pass a Hugging Face model directory or a .gguf file")
    file = src / "config.json"
    if not file.is_file():
        raise ConvertError(f"{src} has no config.json; is it a Hugging Face model directory?")
    hf = read_json_object(file, "re-download the model")
    if hf.get("quantization_config") or hf.get("quantization"):
        raise ConvertError(f"{src} holds quantized weights; import the unquantized (fp16/bf16/fp32) model instead")
    archs = [a for a in hf.get("architectures") or [] if a != "LlamaForCausalLM"]
    if archs:
        raise ConvertError(f"{src}: unsupported architecture '{archs[0]}'; only LlamaForCausalLM can be imported")
    try:
        cfg = from_hf_config(hf)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ConvertError(f"{file}: {detail}") from None
    return hf, check_model_config(cfg, str(src))


def tokenizer_source(src: Path, tmp: Path) -> Path | None:
    """A directory with the source's tokenizer files; a separate chat_template.jinja (transformers 5)
    is folded into tokenizer_config.json so the checkpoint keeps it."""
    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not names:
        return None
    template = src / "chat_template.jinja"
    if not template.is_file() or "tokenizer_config.json" not in names:
        return src
    for name in names:
        shutil.copyfile(src / name, tmp / name)
    config = json.loads((tmp / "tokenizer_config.json").read_text())
    config.setdefault("chat_template", template.read_text())
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return tmp


def import_hf(
    src: str | Path, out: str | Path, *, dtype: str = "auto", tokenizer: str | Path | None = None, force: bool = False
) -> Path:
    """Write our checkpoint for an HF Llama directory; `auto` keeps float32/bfloat16 and widens float16."""
    src = Path(src)
    out = check_output(out, force)
    hf, cfg = read_source_config(src)
    weights = load_weights(src, cfg, fix="re-download the model")
    if dtype == "auto":
        dtype = runtime_dtype(weights)
    weights = cast_weights(weights, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = tokenizer_dir_arg(tokenizer) if tokenizer else tokenizer_source(src, Path(tmp))
        if tok_dir is None:
            print(
                f"warning: {src} has no tokenizer files; the checkpoint will have none (pass --tokenizer DIR)",
                file=sys.stderr,
            )
        state = {"step": 0, "tokens_seen": 0, "imported_from": str(Path(src).resolve()), "backend": "convert"}
        return save_checkpoint(
            out,
            weights,
            cfg,
            tokenizer_dir=tok_dir,
            trainer_state=state,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )
