"""What users name as a model, made into a local model directory that both backends load.

- a checkpoint or any Llama model directory (ours, transformers', mlx_lm's, quantized or not): as it is;
- a `.gguf` file: dequantized into a temporary checkpoint (removed at exit), the same as
  `python -m convert import model.gguf out.ckpt`, which keeps one;
- a Hugging Face Hub id (`HuggingFaceTB/SmolLM2-135M`): config, safetensors weights and tokenizer
  downloaded into the Hub cache (never pickles, never code); HF_HUB_OFFLINE=1 uses the cache only.
"""

from __future__ import annotations

import atexit
import re
import shutil
import sys
import tempfile
from pathlib import Path

from tinyllama.core.cli import UserError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_FILES = [
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
]  # fmt: skip


def resolve_model(name: str | Path) -> Path:
    """The local directory for `name`; what cannot be resolved is returned as a path, so the loader's own
    one-line error says what is wrong with it."""
    path = Path(name)
    if path.is_dir():
        return path
    if path.suffix.lower() == ".gguf" and path.is_file():
        return _from_gguf(path)
    if not path.exists() and HUB_ID.fullmatch(str(name)) and not str(name).startswith((".", "/")):
        return _from_hub(str(name))
    return path


def _from_gguf(path: Path) -> Path:
    from tinyllama.convert.gguf_import import import_gguf

    tmp = Path(tempfile.mkdtemp(prefix="tinyllama-gguf-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    print(
        f"{path}: dequantizing to float32 for this run (to keep the result: python -m convert import {path} out.ckpt)",
        file=sys.stderr,
    )
    return import_gguf(path, tmp / f"{path.stem}.ckpt", dtype="float32")


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id, allow_patterns=HUB_FILES)
    except (OSError, ValueError) as exc:  # not found, gated, offline without a cached copy, no network
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"'{repo_id}' is neither a local path nor a model on the Hugging Face Hub that could be fetched "
            f"({type(exc).__name__}: {reason[:200]}); check the name and the network (HF_HUB_OFFLINE=1 reads only "
            f"the local cache)"
        ) from None
    local = Path(local)
    if not any(local.glob("*.safetensors")):
        raise UserError(
            f"'{repo_id}' on the Hugging Face Hub has no safetensors weights (only pickles, which are never "
            f"loaded); use a model that ships model.safetensors"
        )
    return local
