"""Generate text from a checkpoint (or any Llama-architecture HF directory) with MLX or PyTorch.

    python infer.py --ckpt checkpoints/final.ckpt --tokenizer gpt2 --prompt "The history of Dubai is"
    python infer.py --ckpt checkpoints/final.ckpt --temperature 0 --max-new-tokens 40 --prompt "A" --prompt "B"
    python infer.py --ckpt checkpoints/final.ckpt --prompt-file prompts.txt --seed 0    # one prompt per line
    python infer.py --ckpt checkpoints/final.ckpt                                      # interactive prompt loop

Text streams to stdout as it is generated (the prompt first); speed and memory go to stderr.
--tokenizer defaults to the one saved in the checkpoint. --backend auto picks MLX on Apple Silicon,
CUDA when torch sees a GPU, else torch on the CPU (the faster CPU path).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from core.checkpoint import read_model_config
from core.cli import UserError, human_bytes, human_count, run_cli
from core.config import ModelConfig
from core.sampling import SamplingParams, TextStream, eos_set, fit_prompt

DTYPES = ("float32", "bfloat16", "float16")


# ------------------------------------------------------------------ shared with evaluate_checkpoints


def pick_backend(name: str) -> tuple[str, str]:
    """(backend, device): auto = MLX on Apple Silicon, torch on CUDA when available, else torch on CPU."""
    if name == "mlx":
        return "mlx", "mlx"
    if name == "torch" or name == "auto":
        if name == "auto" and platform.system() == "Darwin" and platform.machine() == "arm64":
            return "mlx", "mlx"
        import torch

        return "torch", "cuda" if torch.cuda.is_available() else "cpu"
    raise UserError(f"unknown backend '{name}': use mlx, torch or auto")


def load_backend(backend: str, device: str, path: str | Path, dtype: str | None) -> tuple[ModuleType, Any, ModelConfig]:
    """(generate module, model, config); the module holds generate, generate_batch, score_continuations, ..."""
    if backend == "mlx":
        from mlx_model import generate as gen
        from mlx_model.state import load_model

        model, cfg = load_model(path, dtype)
    else:
        from torch_model import generate as gen
        from torch_model.state import load_model

        model, cfg = load_model(path, dtype, device)
        model.eval()
    return gen, model, cfg


def has_tokenizer(path: str | Path) -> bool:
    return (Path(path) / "tokenizer.json").is_file() or (Path(path) / "vocab.json").is_file()


def load_tokenizer(spec: str | None, ckpt: str | Path, model_vocab: int):
    """`spec` (gpt2, a HF name, a directory or tokenizer.json) or the checkpoint's own tokenizer, checked
    against the model's vocabulary. The one place that knows where tokenizers come from."""
    from data.tokenizer import Tokenizer
    from data.tokenizer import load_tokenizer as load_spec

    if spec:
        tok = load_spec(spec)  # a DataError is a UserError: one line, exit 2
    elif has_tokenizer(ckpt):
        tok = Tokenizer.from_dir(ckpt)
    else:
        raise UserError(f"{ckpt} has no tokenizer files; pass --tokenizer (e.g. gpt2), the one it was trained with")
    if tok.vocab_size > model_vocab:
        raise UserError(
            f"tokenizer {tok.name or spec} has {tok.vocab_size} tokens but the model in {ckpt} has vocab_size "
            f"{model_vocab}; use the tokenizer it was trained with (omit --tokenizer to use the checkpoint's own)"
        )
    return tok


def encode_prompt(tok, text: str) -> list[int]:
    """Prompt ids with the tokenizer's own special-token template (BOS for Llama tokenizers, none for GPT-2)."""
    return tok.backend.encode(text, add_special_tokens=True).ids


def model_eos(ckpt: str | Path, tok) -> frozenset[int]:
    """EOS ids to stop at: generation_config.json / config.json's eos_token_id plus the tokenizer's."""
    ids: set[int] = {tok.eos_id} if tok.eos_id is not None else set()
    for name in ("generation_config.json", "config.json"):
        file = Path(ckpt) / name
        if file.is_file():
            try:
                ids |= eos_set(json.loads(file.read_text()).get("eos_token_id"))
            except (json.JSONDecodeError, TypeError, ValueError):
                pass
    return frozenset(ids)


# --------------------------------------------------------------------------------------- infer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint directory (*.ckpt) or any Llama HF model directory")
    p.add_argument("--tokenizer", help="gpt2, a HF tokenizer name/directory or tokenizer.json (default: the ckpt's)")
    p.add_argument("--prompt", action="append", default=[], help="prompt text; repeat for several (batched)")
    p.add_argument("--prompt-file", help="a text file with one prompt per line (blank lines skipped)")
    p.add_argument("--backend", default="auto", choices=("auto", "mlx", "torch"), help="default: %(default)s")
    p.add_argument("--max-new-tokens", type=int, default=100, help="default: %(default)s")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 = all")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass; 1 = off (default: %(default)s)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (CTRL); 1 = off")
    p.add_argument("--seed", type=int, help="seed for sampling (default: a fresh one, printed on stderr)")
    p.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: the checkpoint's)")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be >= 1")
    return args


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file:
        file = Path(args.prompt_file)
        if not file.is_file():
            raise UserError(f"prompt file not found: {file}")
        prompts += [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise UserError(f"prompt file {file} has no prompts (one per line)")
    return prompts


def prompt_ids(tok, text: str, cfg: ModelConfig, max_new: int) -> tuple[list[int], int]:
    ids = encode_prompt(tok, text) or [tok.bos_id if tok.bos_id is not None else tok.eos_id]
    ids, max_new, note = fit_prompt(ids, cfg.max_seq_len, max_new)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return ids, max_new


def stream_one(gen: ModuleType, model, tok, cfg, text: str, opts: dict[str, Any], max_new: int) -> dict[str, float]:
    """Generate for one prompt, printing as tokens arrive; returns timing counts."""
    ids, max_new = prompt_ids(tok, text, cfg, max_new)
    stream = TextStream(tok.decode, ids)
    sys.stdout.write(text)
    sys.stdout.flush()
    start = time.perf_counter()
    first = end = start
    n = 0
    for token in gen.generate(model, ids, max_new, **opts):
        end = time.perf_counter()
        if n == 0:
            first = end
        n += 1
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")
    sys.stdout.flush()
    return {"prompt": len(ids), "prefill_s": first - start, "new": n, "decode_s": end - first}


def run_batch(gen: ModuleType, model, tok, cfg, texts: list[str], opts: dict[str, Any], max_new: int) -> dict:
    """Several prompts: batched generation, completions printed in prompt order as they finish."""
    encoded = [prompt_ids(tok, text, cfg, max_new) for text in texts]
    limit = min(n for _, n in encoded)
    done: dict[int, list[int]] = {}
    start, printed, total = time.perf_counter(), 0, 0
    for index, new in gen.generate_batch(model, [ids for ids, _ in encoded], limit, **opts):
        done[index] = new
        total += len(new)
        while printed in done:
            ids = encoded[printed][0]
            text = tok.decode(ids[-1:] + done[printed])[len(tok.decode(ids[-1:])) :]
            print(("\n" if printed else "") + texts[printed] + text, flush=True)
            printed += 1
    return {"prompt": sum(len(ids) for ids, _ in encoded), "new": total, "total_s": time.perf_counter() - start}


def report(stats: dict[str, float], gen: ModuleType, label: str) -> None:
    if "total_s" in stats:
        speed = f"{human_count(stats['new'] / max(stats['total_s'], 1e-9))} tok/s overall"
        line = f"{stats['prompt']} prompt tokens, {stats['new']} generated, {speed}"
    else:
        prefill = stats["prompt"] / max(stats["prefill_s"], 1e-9)
        decode = (stats["new"] - 1) / stats["decode_s"] if stats["new"] > 1 and stats["decode_s"] > 0 else 0.0
        line = (
            f"prompt {stats['prompt']} tokens at {human_count(prefill)} tok/s | "
            f"generated {stats['new']} tokens at {human_count(decode)} tok/s"
        )
    peak = gen.peak_memory()
    print(f"[{label}] {line} | peak memory {human_bytes(peak) if peak else 'n/a'}", file=sys.stderr)


def main(argv: list[str] | None = None, fast_blas: bool = False) -> None:
    args = parse_args(argv)
    cfg = read_model_config(args.ckpt)  # fails early, in one line, on a missing or broken checkpoint
    backend, device = pick_backend(args.backend)
    if backend == "mlx" and fast_blas:
        from mlx_model.blas import ensure_fast_blas

        ensure_fast_blas()  # Linux: re-exec with OpenBLAS preloaded (this process never runs torch)
    try:
        params = SamplingParams(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    prompts = read_prompts(args)
    tok = load_tokenizer(args.tokenizer, args.ckpt, cfg.vocab_size)
    gen, model, cfg = load_backend(backend, device, args.ckpt, args.dtype)
    seed = args.seed
    if seed is None and not params.greedy:
        seed = int(time.time_ns() % 2**31)
    opts = dict(vars(params), seed=seed, eos_id=model_eos(args.ckpt, tok))
    dtype = str(model.model.embed_tokens.weight.dtype).rsplit(".", 1)[-1]  # same path in both twins
    label = f"{backend if backend == 'mlx' else 'torch ' + device} {dtype}"
    label += f", seed {seed}" if seed is not None else ""
    if len(prompts) == 1:
        report(stream_one(gen, model, tok, cfg, prompts[0], opts, args.max_new_tokens), gen, label)
    elif prompts:
        report(run_batch(gen, model, tok, cfg, prompts, opts, args.max_new_tokens), gen, label)
    else:
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                print("prompt (empty line or Ctrl-D to quit)> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line.strip():
                break
            report(stream_one(gen, model, tok, cfg, line.rstrip("\n"), opts, args.max_new_tokens), gen, label)


if __name__ == "__main__":
    run_cli(lambda: main(fast_blas=True))
