"""Our checkpoint -> a clean Hugging Face release directory (and, on request, a Hub repo).

A training checkpoint is already an HF directory, but it carries optimizer moments, trainer state
and the run config, and its weights are in the training dtype. A release keeps only what
`from_pretrained` needs: weights cast to one dtype, config.json saying that dtype, the tokenizer,
generation_config.json and a short model card.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from safetensors.numpy import save_file

from tinyllama.convert.common import (
    ConvertError,
    canonical_dtype,
    cast_weights,
    check_expressible,
    check_output,
    check_space,
    load_checked_weights,
    prepare_tokenizer,
    writing,
)
from tinyllama.core.architecture import count_parameters
from tinyllama.core.checkpoint import read_trainer_state
from tinyllama.core.dtypes import DTYPE_SPELLINGS, DTYPES
from tinyllama.core.hf_config import to_hf_config
from tinyllama.core.model_files import read_hf_config, read_json_object, read_model_config


def model_card(name: str, cfg, dtype: str, state: dict) -> str:
    params = count_parameters(cfg)
    tokens, step = state.get("tokens_seen"), state.get("step", 0)
    trained = f"{tokens:,} tokens, {step} steps" if type(tokens) is int and tokens > 0 else "n/a"
    return (
        f"---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [llama]\n---\n\n# {name}\n\n"
        f"A Llama-architecture model ({params / 1e6:.1f}M parameters, {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads}/{cfg.n_kv_heads} heads), weights in {dtype}. Trained on: {trained}.\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f'model = AutoModelForCausalLM.from_pretrained("{name}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")\n```\n'
    )


def export_hf(ckpt: str | Path, out: str | Path, *, dtype: str = "bfloat16", force: bool = False) -> Path:
    """Write the release directory; nothing but weights, config, tokenizer, generation config, card."""
    if canonical_dtype(dtype) not in DTYPES:
        raise ConvertError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPE_SPELLINGS.values())}")
    out = check_output(out, force, source=ckpt)
    ckpt = Path(ckpt)
    cfg = read_model_config(ckpt)
    check_expressible(ckpt, cfg, "transformers")
    hf = read_hf_config(ckpt)
    name = canonical_dtype(dtype)
    fix = "use another checkpoint"
    generation = ckpt / "generation_config.json"
    generation = read_json_object(generation, fix) if generation.is_file() else None
    with tempfile.TemporaryDirectory() as staging:
        tok_dir = prepare_tokenizer(ckpt, Path(staging), cfg.vocab_size)
        weights = cast_weights(load_checked_weights(ckpt, cfg, fix), name, ckpt)
        config = to_hf_config(cfg, hf.get("bos_token_id"), hf.get("eos_token_id"), dtype=name)
        if generation is None:
            generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
        check_space(out, sum(v.nbytes for v in weights.values()))
        with writing(out) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
            for file in tok_dir.iterdir() if tok_dir else ():
                shutil.copyfile(file, tmp / file.name)
            save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
            card = model_card(ckpt.name.removesuffix(".ckpt"), cfg, name, read_trainer_state(ckpt))
            (tmp / "README.md").write_text(card)
    return out


def push_to_hub(folder: str | Path, repo: str, *, private: bool = False) -> str:
    """Upload a release directory to a Hub model repo (needs network and `hf auth login` or HF_TOKEN)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    except ImportError:
        raise ConvertError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi()
    try:
        api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            repo_type="model",
            commit_message="Upload model exported by tiny-llama",
        )
    except OfflineModeIsEnabled:
        raise ConvertError("--push-to-hub: HF_HUB_OFFLINE is set; unset it (and log in) to upload") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ConvertError(f"--push-to-hub {repo} failed ({exc}); check the network and `hf auth login`") from None
    return getattr(commit, "commit_url", f"https://huggingface.co/{repo}")
