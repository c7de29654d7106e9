"""The speedrun's levers, each at equal wall time: validation bits per byte after a fixed budget.

    python bench/ablate.py                                      # every lever, configs/speedrun.yaml's 10 minutes
    python bench/ablate.py --budget 3 --only baseline --only "no qk_norm" --seeds 0 1 2 --markdown rows.md
    python bench/ablate.py --list                               # the levers and their overrides
    python bench/ablate.py --budget 3 --model.qk_norm false     # every lever on a changed base

Each lever is a set of config overrides on configs/speedrun.yaml, trained with `train.py` (torch on Linux,
MLX on a Mac: the same script), `training.time_budget` minutes from the first step to the final evaluation,
in its own process and output folder; the result is the final val bpb (metrics.jsonl), the steps the budget
allowed, the epochs they covered and the minutes they took (a budget is kept to the machine's speed in its
first steps: a machine that slows down later runs over). Runs take turns lever by lever within a seed, so a
machine whose speed drifts hits every lever alike; `--seeds` repeats the whole round (seed = training.seed:
init and data order).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "speedrun.yaml"

# name -> overrides on configs/speedrun.yaml (equal-parameter variants keep the block's size: relu2's two
# matrices at 1.5x d_ff hold what SwiGLU's three hold).
LEVERS: dict[str, dict[str, str]] = {
    "baseline": {},
    "gpt2 tokenizer": {"data.tokenizer": "gpt2", "model.vocab_size": "50257"},
    "bpe:2048": {"data.tokenizer": "bpe:2048", "model.vocab_size": "2048"},
    "bpe:4096": {"data.tokenizer": "bpe:4096", "model.vocab_size": "4096"},
    "bpe:16384": {"data.tokenizer": "bpe:16384", "model.vocab_size": "16384"},
    "d192 x 6 layers": {"model.d_model": "192", "model.n_layers": "6", "model.n_heads": "3", "model.n_kv_heads": "3",
                        "model.d_ff": "512"},
    "d384 x 3 layers": {"model.d_model": "384", "model.n_heads": "6", "model.n_kv_heads": "6", "model.n_layers": "3",
                        "model.d_ff": "1024"},
    "6 layers": {"model.n_layers": "6"},
    "seq 256": {"training.seq_len": "256", "training.batch_size": "8"},
    "batch 8": {"training.batch_size": "8"},
    "no qk_norm": {"model.qk_norm": "false"},
    "relu2": {"model.mlp": "relu2", "model.d_ff": "1032"},
    "logit_softcap 15": {"model.logit_softcap": "15"},
    "z_loss 1e-4": {"training.z_loss": "1e-4"},
    "untied head": {"model.tie_embeddings": "false"},
    "zero-init residual": {"model.zero_init_residual": "true"},
    "adamw + cosine": {"training.optimizer": "adamw", "training.schedule": "cosine", "training.lr": "1e-3",
                       "training.min_lr": "1e-4"},
    "muon_lr 0.04": {"training.muon_lr": "0.04"},
    "lr 4e-3": {"training.lr": "4e-3", "training.min_lr": "4e-4"},
    "no weight decay": {"training.weight_decay": "0", "training.muon_weight_decay": "0"},
    "no muon_weight_decay": {"training.muon_weight_decay": "0"},
    "decay 40%": {"training.decay_fraction": "0.4"},
}  # fmt: skip


def lever_args(name: str) -> list[str]:
    """The lever's config overrides as command-line arguments."""
    return [arg for key, value in LEVERS[name].items() for arg in (f"--{key}", value)]


def run_folder(work: Path, name: str, seed: int) -> Path:
    """Where the run of lever `name` with `seed` writes (its logs under run/, checkpoints under ckpt/)."""
    return work / f"{name.replace(' ', '_').replace(':', '')}-seed{seed}"


def run_lever(name: str, seed: int, budget: float, work: Path, extra: list[str], config: Path = CONFIG) -> dict:
    """One training run of `name`; its final figures (or the error it ended with)."""
    folder = run_folder(work, name, seed)
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--training.time_budget", str(budget),
           "--training.seed", str(seed), "--output.dir", str(folder / "ckpt"), "--output.logs", str(folder),
           "--output.run_name", "run", *extra, *lever_args(name)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        return {"lever": name, "seed": seed, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    records = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    train = [r for r in records if r["split"] == "train"]
    return {"lever": name, "seed": seed, "val_bpb": val[-1]["bpb"], "val_loss": val[-1]["loss"],
            "best_val_bpb": min(r["bpb"] for r in val), "steps": val[-1]["step"],
            "epochs": train[-1].get("epoch"), "train_loss": train[-1]["loss"],
            "minutes": train[-1]["time"] / 60}  # fmt: skip


def table(results: list[dict], budget: float) -> str:
    """A markdown table: one row a lever, the median over seeds (and each seed's figure)."""
    rows = ["| lever | val bpb (median) | seeds | steps | epochs | minutes | command |"]
    rows.append("| --- | ---: | --- | ---: | ---: | ---: | --- |")
    for name in dict.fromkeys(r["lever"] for r in results):
        runs = [r for r in results if r["lever"] == name and "val_bpb" in r]
        failed = [r for r in results if r["lever"] == name and "error" in r]
        overrides = " ".join(lever_args(name))
        command = f"`python train.py --config configs/speedrun.yaml --training.time_budget {budget:g} {overrides}`"
        if not runs:
            rows.append(f"| {name} | failed: {failed[0]['error']} | | | | | {command} |")
            continue
        bpb = statistics.median(r["val_bpb"] for r in runs)
        seeds = ", ".join(f"{r['val_bpb']:.3f}" for r in runs)
        steps = statistics.median(r["steps"] for r in runs)
        epochs = statistics.median(r["epochs"] or 0 for r in runs)
        minutes = statistics.median(r["minutes"] for r in runs)  # first step to the last one logged
        rows.append(f"| {name} | {bpb:.3f} | {seeds} | {steps:.0f} | {epochs:.1f} | {minutes:.1f} | {command} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=10.0, help="minutes per run (default: 10)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the recipe the levers change (default: speedrun)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", action="append", choices=sorted(LEVERS), help="run only these levers (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the levers and their overrides, then exit")
    parser.add_argument("--json", metavar="PATH", help="also write every run's figures as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as markdown")
    parser.add_argument("--work", metavar="DIR", help="where runs write (default: a temporary folder)")
    # anything else goes to every run, before the lever's keys: e.g. --data.cache_dir X, or a base the levers
    # change (--data.tokenizer bpe:2048 --model.vocab_size 2048 still lets "bpe:4096" set its own)
    args, extra = parser.parse_known_args()
    if args.list:
        for name in LEVERS:
            print(f"{name:<22} {' '.join(lever_args(name)) or '(configs/speedrun.yaml)'}")
        return
    levers = args.only or list(LEVERS)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        for seed in args.seeds:
            for name in levers:
                results.append(run_lever(name, seed, args.budget, work, extra, args.config))
                r = results[-1]
                epochs = f"{r.get('epochs') or 0:.2f}"
                shown = r.get("error") or f"val bpb {r['val_bpb']:.3f} after {r['steps']} steps, {epochs} epochs"
                print(f"seed {seed} {name:<22} {shown}", flush=True)
    text = table(results, args.budget)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"budget_min": args.budget, "results": results}) + "\n")


if __name__ == "__main__":
    main()
