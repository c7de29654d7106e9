"""Generation speed: ours vs the reference implementations, same checkpoint, same process, same BLAS.

    python bench/generate.py                      # both sides, config.yaml's model (28.7M params), ~1-2 min
    python bench/generate.py --side torch --new-tokens 64 --repeats 2

Ours (mlx_model.generate.load_backend) vs mlx_lm's generate_step, and ours on torch vs transformers'
`generate`, on one checkpoint with random weights (the shared numpy init: speed does not depend on
the values). Each side runs in its own process: on Linux the MLX process gets OpenBLAS preloaded
(mlx_model.blas) and the torch process never does (it would replace torch's GEMM), so within each
comparison both contestants share the process and the BLAS. Tok/s = new tokens / wall time of the
whole call (prefill included); the best of --repeats after a warm-up. Greedy and sampled
(temperature 0.8, top-p 0.95) decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyllama.core.architecture import count_parameters, init_weights  # noqa: E402
from tinyllama.core.checkpoint import save_checkpoint  # noqa: E402
from tinyllama.core.config import load_config  # noqa: E402

SAMPLED = {"temperature": 0.8, "top_p": 0.95}


def best_rates(contestants: dict, n: int, repeats: int) -> dict[str, float]:
    """Best tok/s of each contestant, runs interleaved (A B A B ...) so load changes hit both alike."""
    for fn in contestants.values():
        fn(min(n, 8))  # warm-up: first-call allocations, kernel selection
    best = dict.fromkeys(contestants, float("inf"))
    for _ in range(repeats):
        for name, fn in contestants.items():
            start = time.perf_counter()
            produced = fn(n)
            best[name] = min(best[name], time.perf_counter() - start)
            assert produced == n, f"{name} made {produced} tokens, expected {n}"
    return {name: n / seconds for name, seconds in best.items()}


def ours_run(backend, prompt: list[int], opts: dict, k: int) -> int:
    return len(list(backend.generate(prompt, k, seed=0, **opts)))


def mlx_side(ckpt: str, prompt: list[int], n: int, repeats: int) -> dict[str, float]:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler
    from mlx_lm.utils import load_model as mlx_lm_load_model

    from tinyllama.mlx_model.generate import load_backend

    ours = load_backend(ckpt)
    ref, _ = mlx_lm_load_model(Path(ckpt))
    tokens = mx.array(prompt)
    out = {}

    def ref_run(k: int, sampler) -> int:
        return sum(1 for _ in generate_step(tokens, ref, max_tokens=k, sampler=sampler))

    for mode, opts in (("greedy", {}), ("sampled", SAMPLED)):
        sampler = make_sampler(temp=opts.get("temperature", 0.0), top_p=opts.get("top_p", 0.0))
        contestants = {
            "ours": partial(ours_run, ours, prompt, opts),
            "mlx_lm": partial(ref_run, sampler=sampler),
        }
        out.update({f"{name} {mode}": rate for name, rate in best_rates(contestants, n, repeats).items()})
    mine = list(ours.generate(prompt, n))
    theirs = [int(t) for t, _ in generate_step(tokens, ref, max_tokens=n, sampler=make_sampler(temp=0.0))]
    out["greedy agree"] = agreement(mine, theirs)
    return out


def agreement(a: list[int], b: list[int]) -> int:
    """How many leading greedy tokens two implementations share (random weights: near-tied logits)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def torch_side(ckpt: str, prompt: list[int], n: int, repeats: int, threads: int = 0) -> dict[str, float]:
    import torch
    from transformers import LlamaForCausalLM

    if threads:
        torch.set_num_threads(threads)

    from tinyllama.torch_model.generate import load_backend

    ours = load_backend(ckpt, device="cpu")
    ref = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])

    def hf(k: int, **opts) -> int:
        with torch.inference_mode():
            done = ref.generate(ids, max_new_tokens=k, min_new_tokens=k, pad_token_id=0, **opts)
        return done.shape[1] - len(prompt)

    out = {}
    for mode, opts in (("greedy", {}), ("sampled", SAMPLED)):
        hf_opts = {"do_sample": bool(opts), "top_k": None, **opts}
        contestants = {"ours": partial(ours_run, ours, prompt, opts), "transformers": partial(hf, **hf_opts)}
        out.update({f"{name} {mode}": rate for name, rate in best_rates(contestants, n, repeats).items()})
    with torch.inference_mode():
        theirs = ref.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    out["greedy agree"] = agreement(list(ours.generate(prompt, n)), theirs[0, len(prompt) :].tolist())
    out["threads"] = torch.get_num_threads()
    return out


def run_side(side: str, args: argparse.Namespace, ckpt: Path) -> dict[str, float]:
    """One side in a fresh process (OpenBLAS preloaded for MLX on Linux, never for torch)."""
    env = dict(os.environ)
    if side == "mlx":
        from tinyllama.mlx_model.blas import find_openblas

        lib = find_openblas()
        if lib and sys.platform == "linux" and "openblas" not in env.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = ":".join(filter(None, [lib, env.get("LD_PRELOAD")]))
        if args.threads:
            env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, __file__, "--side", side, "--ckpt", str(ckpt), "--json"]
    cmd += ["--new-tokens", str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens)]
    cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=("both", "mlx", "torch"), default="both")
    p.add_argument("--config", default=str(ROOT / "config.yaml"), help="model size (default: %(default)s)")
    p.add_argument("--ckpt", help="an existing checkpoint (default: random weights of --config's model)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    threads_help = "CPU threads for torch (set_num_threads) and MLX's OpenBLAS (default: the libraries' choice)"
    p.add_argument("--threads", type=int, default=0, help=threads_help)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else None
        if ckpt is None:
            cfg = load_config(args.config).model
            ckpt = save_checkpoint(Path(tmp) / "bench.ckpt", init_weights(cfg, seed=0), cfg)
            print(f"model: {args.config}'s, {count_parameters(cfg) / 1e6:.1f}M params, random init weights")
        vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
        prompt = np.random.default_rng(0).integers(0, vocab, args.prompt_tokens).tolist()
        if args.json:
            if args.side == "mlx":
                print(json.dumps(mlx_side(str(ckpt), prompt, args.new_tokens, args.repeats)))
            else:
                print(json.dumps(torch_side(str(ckpt), prompt, args.new_tokens, args.repeats, args.threads)))
            return
        print(f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, best of {args.repeats}")
        for side in ("mlx", "torch") if args.side == "both" else (args.side,):
            rates = run_side(side, args, ckpt)
            ref = "mlx_lm" if side == "mlx" else "transformers"
            for mode in ("greedy", "sampled"):
                ours, theirs = rates[f"ours {mode}"], rates[f"{ref} {mode}"]
                line = f"{side:5s} {mode:7s}  ours {ours:7.1f} tok/s  {ref:12s} {theirs:7.1f} tok/s"
                print(f"{line}  ratio {ours / theirs:.2f}x")
            print(f"{side:5s} greedy tokens identical to {ref}: {int(rates['greedy agree'])} of {args.new_tokens}")
            if side == "torch":
                print(f"torch CPU threads: {int(rates['threads'])}")
            elif args.threads:
                print(f"OpenBLAS threads: {args.threads}")


if __name__ == "__main__":
    main()
