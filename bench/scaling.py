"""Training throughput and peak memory across model and sequence sizes, on both backends, within a time budget.

    python bench/scaling.py                       # d_model 128/256/512/768 x seq 128/512/1024, ~8 min budget
    python bench/scaling.py --budget 1800 --json scaling.json
    python bench/scaling.py --quick               # a tiny smoke pass (seconds)

Each size is config.yaml's model (6 layers, GPT-2 vocabulary) at that d_model (64-wide heads, half as many
key/value heads, SwiGLU 8/3 x d_model), trained on --tokens tokens per step (batch = tokens / seq) with the
trainers' own steps, reused the way bench/train_torch.py and bench/train_mlx.py use them: our torch model on
CUDA, else MPS on a Mac, else the CPU; our MLX model on the Metal GPU on a Mac, else MLX's CPU backend. Every
size runs in its own process after a warm-up, so peaks never mix: MLX reports mx.get_peak_memory(), torch on
CUDA max_memory_allocated(), on MPS the driver's allocation, on the CPU the process's peak RSS.

Sizes run cheapest first. After each run the next one's time is predicted from the FLOP/s measured so far; a
size that would not finish inside what is left of --budget is listed as "not run here (run on a Mac/GPU)".
On a Mac the same run puts torch on MPS against MLX on the GPU and prints which wins and by how much, with
the Metal GPU's name. --json PATH writes everything (bench/run_all.py reads it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyllama.core import hardware  # noqa: E402

NOT_RUN = "not run here (run on a Mac/GPU)"
WARMUP_STEPS = 2  # torch warms up (and compiles) on 2 steps, MLX compiles on 1


@dataclass(frozen=True)
class Case:
    backend: str  # torch | mlx
    device: str  # cuda | mps | cpu (torch), gpu | cpu (mlx)
    d_model: int
    seq_len: int
    batch_size: int


def load(config: str, case: Case):
    """The config at this size: 64-wide heads, half as many key/value heads, SwiGLU 8/3 x d_model."""
    from tinyllama.core.config import load_config

    d, heads = case.d_model, max(1, case.d_model // 64)
    model = {"d_model": d, "n_heads": heads, "n_kv_heads": max(1, heads // 2), "d_ff": -(-8 * d // 3 // 64) * 64}
    overrides = {f"model.{k}": v for k, v in model.items()} | {"model.max_seq_len": max(case.seq_len, 1024)}
    return load_config(config, overrides | {"training.seq_len": case.seq_len, "training.batch_size": case.batch_size})


# --- platform decisions (small, so tests can run them with a mocked Mac) ---


def torch_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if hardware.is_apple_silicon() and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def mlx_installed() -> bool:
    return importlib.util.find_spec("mlx") is not None


def mlx_device() -> str | None:
    if not mlx_installed():
        return None
    return "gpu" if hardware.is_apple_silicon() else "cpu"


def backends(wanted: list[str]) -> list[tuple[str, str]]:
    """(backend, device) pairs to measure on this machine."""
    found = [("torch", torch_device()) if "torch" in wanted else None]
    found.append(("mlx", mlx_device()) if "mlx" in wanted and mlx_device() else None)
    return [b for b in found if b]


def compares_mps_with_mlx(pairs: list[tuple[str, str]]) -> bool:
    """On an Apple Silicon Mac: our torch model on MPS against our MLX model on the GPU, in one run."""
    return ("torch", "mps") in pairs and ("mlx", "gpu") in pairs


def _command(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def gpu_name() -> str | None:
    """The Metal GPU (with its core count) on a Mac, the first CUDA GPU elsewhere, or None."""
    if platform.system() == "Darwin":
        info = dict(
            line.strip().split(":", 1) for line in _command(["system_profiler", "SPDisplaysDataType"]).splitlines()
            if ":" in line and line.strip().startswith(("Chipset Model", "Total Number of Cores"))
        )  # fmt: skip
        if "Chipset Model" in info:
            cores = info.get("Total Number of Cores", "").strip()
            return info["Chipset Model"].strip() + (f", {cores} GPU cores" if cores else "")
        if mlx_installed():
            import mlx.core as mx

            return mx.device_info().get("device_name") or hardware.apple_chip()
        return hardware.apple_chip()
    name = _command(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).strip().splitlines()
    return name[0] if name else None


# --- the budget: cheapest first, each run predicted from the FLOP/s measured so far ---


def plan(pairs, d_models, seqs, tokens: int, config: str) -> list[Case]:
    """Every (backend, size), cheapest step first (backends alternate at each size)."""
    cases = [Case(b, dev, d, s, max(1, tokens // s)) for d in d_models for s in seqs for b, dev in pairs]
    return sorted(cases, key=lambda c: step_flops(c, config))


def step_flops(case: Case, config: str) -> float:
    from tinyllama.core.architecture import flops_per_token

    return case.batch_size * case.seq_len * flops_per_token(load(config, case).model, case.seq_len)


def predict(case: Case, flops: float, steps: int, fits: dict) -> float | None:
    """Seconds the case should take, from the last run on its backend (None: nothing measured yet)."""
    fit = fits.get((case.backend, case.device))
    return None if fit is None else fit["overhead_s"] + (steps + WARMUP_STEPS) * flops / fit["flops_per_s"]


def skip_reason(predicted: float | None, left: float) -> str | None:
    if left <= 0:
        return f"{NOT_RUN}: the budget is spent"
    if predicted is not None and predicted > left:
        return f"{NOT_RUN}: ~{predicted:,.0f} s predicted, {left:,.0f} s of the budget left"
    return None


def run_plan(cases, budget_s: float, steps: int, config: str, run_one, clock=time.monotonic) -> list[dict]:
    """Run each case that fits what is left of the budget; `run_one(case, timeout_s)` -> result dict."""
    start, fits, results = clock(), {}, []
    for case in cases:
        flops = step_flops(case, config)
        predicted = predict(case, flops, steps, fits)
        reason = skip_reason(predicted, budget_s - (clock() - start))
        if reason:
            results.append({**asdict(case), "status": "skipped", "note": reason})
            continue
        began = clock()
        result = run_one(case, max(1.0, budget_s - (began - start)))
        wall = clock() - began
        results.append({**asdict(case), **result, "wall_s": wall})
        if result.get("status") == "ok":
            step_s = (steps + WARMUP_STEPS) * case.batch_size * case.seq_len / result["tok_s"]
            fits[(case.backend, case.device)] = {
                "flops_per_s": result["tok_s"] * flops / (case.batch_size * case.seq_len),
                "overhead_s": max(0.0, wall - step_s),
            }
        elif result.get("status") == "timeout":
            results[-1]["note"] = f"{NOT_RUN}: stopped at the end of the budget"
    return results


def subprocess_runner(config: str, steps: int):
    def run_one(case: Case, timeout_s: float) -> dict:
        cmd = [sys.executable, __file__, "--worker", case.backend, "--device", case.device, "--config", config]
        cmd += ["--d-model", str(case.d_model), "--seq", str(case.seq_len), "--batch", str(case.batch_size)]
        try:
            done = subprocess.run(cmd + ["--steps", str(steps)], capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"status": "timeout"}
        if done.returncode != 0:
            return {"status": "failed", "note": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
        return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}

    return run_one


# --- one size, in its own process ---


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(args) -> dict:
    import numpy as np

    case = Case(args.worker, args.device, args.d_model, args.seq, args.batch)
    cfg = load(args.config, case)
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, cfg.model.vocab_size, (case.batch_size, case.seq_len + 1)) for _ in range(args.steps)]
    batches = [(t[:, :-1].astype(np.int32), t[:, 1:].astype(np.int32)) for t in tokens]
    from tinyllama.core.architecture import init_weights

    if case.backend == "mlx":
        import mlx.core as mx

        from tinyllama.mlx_model.state import build_model

        bench = _bench_module("train_mlx")
        step = bench.make_step(build_model(cfg.model, init_weights(cfg.model, 0)), cfg)
        bench.tokens_per_second(step, batches[:1])  # compile
        tok_s = bench.tokens_per_second(step, batches)
        return {"tok_s": tok_s, "peak_bytes": mx.get_peak_memory(), "memory": "mx.get_peak_memory"}
    import torch

    from tinyllama.torch_model.state import build_model

    device = torch.device(case.device)
    model = build_model(cfg.model, init_weights(cfg.model, 0), device=device)
    compile_model = device.type == "cuda" and cfg.training.compile

    def loss_of(m, x, y):
        if device.type == "mps":  # tokens_per_second waits only for CUDA: each MPS step waits for the one before
            torch.mps.synchronize()
        return m(x, targets=y)

    bench = _bench_module("train_torch")
    step = bench.make_step(model, loss_of, cfg, device, False, compile_model)
    tensors = bench.on_device(batches, device)
    bench.tokens_per_second(step, tensors[:WARMUP_STEPS], device)  # warm up (and compile)
    tok_s = bench.tokens_per_second(step, tensors, device)
    if device.type == "cuda":
        return {"tok_s": tok_s, "peak_bytes": torch.cuda.max_memory_allocated(), "memory": "max_memory_allocated"}
    if device.type == "mps":
        return {"tok_s": tok_s, "peak_bytes": torch.mps.driver_allocated_memory(), "memory": "MPS driver allocated"}
    return {"tok_s": tok_s, "peak_bytes": hardware.peak_rss_bytes(), "memory": "peak RSS"}


# --- report ---


def comparison(results: list[dict]) -> str | None:
    """Which backend wins at the sizes both ran, and by how much (MLX tok/s / torch tok/s)."""
    ran = {(r["backend"], r["d_model"], r["seq_len"]): r for r in results if r["status"] == "ok"}
    both = [(d, s) for b, d, s in ran if b == "torch" and ("mlx", d, s) in ran]
    ratios = [ran[("mlx", d, s)]["tok_s"] / ran[("torch", d, s)]["tok_s"] for d, s in both]
    if not ratios:
        return None
    devices = {r["backend"]: r["device"] for r in results}
    wins = sum(x > 1 for x in ratios)
    median = statistics.median(ratios)
    leader = f"MLX, {median:.2f}x" if median >= 1 else f"torch, {1 / median:.2f}x"
    return (f"our MLX model ({devices['mlx']}) vs our torch model ({devices['torch']}): MLX faster at {wins} of "
            f"{len(ratios)} sizes; MLX / torch {min(ratios):.2f}x-{max(ratios):.2f}x, median {median:.2f}x "
            f"(the winner: {leader})")  # fmt: skip


def table(results: list[dict]) -> str:
    from tinyllama.core.cli import human_bytes

    pairs = list(dict.fromkeys((r["backend"], r["device"]) for r in results))
    head = "| d_model | seq x batch | " + " | ".join(f"{b} ({d}) tok/s | peak memory" for b, d in pairs) + " |"
    lines = [head, "| ---: | ---: |" + " ---: | --- |" * len(pairs)]
    sizes = list(dict.fromkeys((r["d_model"], r["seq_len"], r["batch_size"]) for r in results))
    for d, s, batch in sorted(sizes):
        cells = []
        for b, dev in pairs:
            r = next(r for r in results if (r["backend"], r["device"], r["d_model"], r["seq_len"]) == (b, dev, d, s))
            if r["status"] == "ok":
                cells += [f"{r['tok_s']:,.0f}", f"{human_bytes(r['peak_bytes'])} ({r['memory']})"]
            else:
                cells += [r.get("note") or r["status"], ""]
        lines.append(f"| {d} | {s} x {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config.yaml"), help="the base model (default: %(default)s)")
    p.add_argument("--d-models", default="128,256,512,768")
    p.add_argument("--seqs", default="128,512,1024")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step (batch = tokens / seq)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per size, after the warm-up")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole sweep (default: %(default)s)")
    p.add_argument("--backends", default="torch,mlx")
    p.add_argument("--quick", action="store_true", help="tiny sizes on configs/smoke.yaml, a 90 s budget")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    p.add_argument("--worker", choices=("torch", "mlx"), help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    for name in ("--d-model", "--seq", "--batch"):
        p.add_argument(name, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        if args.worker == "mlx":
            from tinyllama.mlx_model.blas import ensure_fast_blas

            ensure_fast_blas()  # Linux: re-exec with OpenBLAS preloaded (MLX processes only)
        return print(json.dumps(worker(args)))
    if args.quick:
        args.config, args.d_models, args.seqs = str(ROOT / "configs/smoke.yaml"), "64", "32,64"
        args.tokens, args.steps, args.budget = 64, 1, min(args.budget, 90)
    pairs = backends(args.backends.split(","))
    cases = plan(pairs, [int(x) for x in args.d_models.split(",")], [int(x) for x in args.seqs.split(",")],
                 args.tokens, args.config)  # fmt: skip
    print(f"{len(cases)} runs on {pairs}, budget {args.budget:.0f} s; GPU: {gpu_name() or 'none'}", flush=True)
    results = run_plan(cases, args.budget, args.steps, args.config, subprocess_runner(args.config, args.steps))
    print(table(results))
    verdict = comparison(results)
    if compares_mps_with_mlx(pairs):
        print(f"Metal GPU: {gpu_name()}")
    if verdict:
        print(verdict)
    if args.json:
        out = {"results": results, "budget_s": args.budget, "tokens": args.tokens, "steps": args.steps}
        out |= {"gpu": gpu_name(), "comparison": verdict, "mac": compares_mps_with_mlx(pairs), "config": args.config}
        Path(args.json).write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
