"""A Hugging Face Llama model directory -> our checkpoint (same names; checked, cast, tokenizer copied).

The state dict already uses HF names, so the work is refusing what would load wrongly: another
model_type, biases, RoPE scaling, quantized or pickle-only weights, missing or mis-shaped tensors,
non-finite values. Only config.json, safetensors and tokenizer files are read: `auto_map` and
`trust_remote_code` are ignored, no `*.py` is copied or imported, no pickle is opened.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from tinyllama.convert.common import (
    ConvertError,
    cast_weights,
    check_model_config,
    check_output,
    load_checked_weights,
    prepare_tokenizer,
    tokenizer_dir_arg,
    write_imported,
)
from tinyllama.core.architecture import FORMATS
from tinyllama.core.config import ConfigError, ModelConfig
from tinyllama.core.dtypes import runtime_dtype
from tinyllama.core.hf_config import from_hf_config
from tinyllama.core.model_files import read_json_object

FIX = "re-download the model"


def read_source_config(src: Path) -> tuple[dict[str, Any], ModelConfig]:
    """The source's config.json and our ModelConfig for it, or one line saying why it cannot be imported."""
    if not src.exists():
        raise ConvertError(f"{src}: not found; pass a Hugging Face model directory or a .gguf file")
    if not src.is_dir():
        raise ConvertError(f"{src} is not a directory; pass a Hugging Face model directory or a .gguf file")
    file = src / "config.json"
    if not file.is_file():
        raise ConvertError(f"{src} has no config.json; is it a Hugging Face model directory?")
    hf = read_json_object(file, FIX)
    if hf.get("quantization_config") or hf.get("quantization"):
        raise ConvertError(f"{src} holds quantized weights; import the unquantized (fp16/bf16/fp32) model instead")
    archs = hf.get("architectures") or []
    known = [f.hf_class for f in FORMATS.values()]
    archs = [a for a in (archs if isinstance(archs, list) else [archs]) if a not in known]
    if archs:
        raise ConvertError(f"{src}: unsupported architecture '{archs[0]}'; only {', '.join(known)} can be imported")
    try:
        cfg = from_hf_config(hf)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ConvertError(f"{file}: {detail}; fix it or {FIX}") from None
    for key in ("bos_token_id", "eos_token_id"):
        ids = hf.get(key)
        ids = ids if isinstance(ids, list) else [ids]
        if not all(i is None or (type(i) is int and 0 <= i < cfg.vocab_size) for i in ids):
            raise ConvertError(f"{file}: '{key}' is {hf.get(key)!r}, not a token id below {cfg.vocab_size}; {FIX}")
    return hf, check_model_config(cfg, str(src))


def import_hf(
    src: str | Path, out: str | Path, *, dtype: str = "auto", tokenizer: str | Path | None = None, force: bool = False
) -> Path:
    """Write our checkpoint for an HF Llama directory; `auto` keeps float32/bfloat16 and widens float16.
    Everything is read and verified (config, tokenizer, every tensor, the cast) before OUT is written."""
    src = Path(src)
    out = check_output(out, force, source=src)
    hf, cfg = read_source_config(src)
    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer:
            tok_dir = prepare_tokenizer(tokenizer_dir_arg(tokenizer), Path(tmp), cfg.vocab_size)
        else:
            tok_dir = prepare_tokenizer(src, Path(tmp), cfg.vocab_size)
        weights = load_checked_weights(src, cfg, FIX)
        weights = cast_weights(weights, runtime_dtype(weights) if dtype == "auto" else dtype, src)
        if tok_dir is None:
            print(
                f"warning: {src} has no tokenizer files; the checkpoint will have none (pass --tokenizer DIR)",
                file=sys.stderr,
            )
        return write_imported(out, weights, cfg, src, tok_dir, hf.get("bos_token_id"), hf.get("eos_token_id"))
