"""Score checkpoints on probe cases and validation loss: a table by step, JSON/CSV records, a plot.

    python evaluate_checkpoints.py --checkpoints 'checkpoints/*.ckpt' --tokenizer gpt2 --top-k 5 \\
        --cases cases/wiki_basics.yaml --out results.json --plot eval.png

Per checkpoint: step and tokens seen (trainer_state.json), loss and perplexity on the run's prepared
validation split (skipped with a note when that data is not prepared), and per case the rank of the
expected continuation's first token, whether it is in the top 1 / top k, and the log-probability of the
whole expected continuation (teacher-forced). Case file format: docs/inference.md.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from core.cases import case_tokens, load_cases
from core.checkpoint import read_model_config, read_train_config, read_trainer_state
from core.cli import UserError, human_count, run_cli
from infer import DTYPES, encode_prompt, has_tokenizer, load_backend, load_tokenizer, pick_backend

DEFAULT_CASES = Path(__file__).resolve().parent / "cases" / "wiki_basics.yaml"
MATCH_KEYS = ("dataset", "max_documents", "tokenizer", "val_fraction")  # what makes a prepared val split ours
CASE_KEYS = ("name", "prompt", "expect", "rank", "hit", "logprob", "mean_logprob")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint directories or quoted globs")
    p.add_argument("--cases", default=str(DEFAULT_CASES), help="YAML case file (default: cases/wiki_basics.yaml)")
    p.add_argument("--tokenizer", help="gpt2, a HF tokenizer name/directory or tokenizer.json (default: each ckpt's)")
    p.add_argument("--top-k", type=int, default=5, help="a case hits when its answer ranks <= k (default: %(default)s)")
    p.add_argument("--backend", default="auto", choices=("auto", "mlx", "torch"), help="default: %(default)s")
    p.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: the checkpoint's)")
    val_help = "validation tokens to score (default: %(default)s); 0 = all, -1 = skip"
    p.add_argument("--val-tokens", type=int, default=32768, help=val_help)
    p.add_argument("--prepare-val", action="store_true", help="prepare the run's data when it is not cached yet")
    p.add_argument("--out", help="write records to a .json or .csv file")
    p.add_argument("--plot", help="write a PNG of the metrics against training step")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k must be >= 1")
    if args.out and Path(args.out).suffix.lower() not in (".json", ".csv"):
        p.error("--out must end in .json or .csv")
    return args


def expand(patterns: list[str]) -> list[Path]:
    found: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"no checkpoint matches {pattern!r}; train first or check the path")
        found.update(dict.fromkeys(Path(m) for m in matches))
    return list(found)


def find_prepared(data: dict[str, Any], fingerprint: str | None) -> Path | None:
    """The newest prepared directory in data.cache_dir made from this dataset/tokenizer/split (never builds)."""
    given = Path(str(data.get("dataset", ""))).expanduser()
    metas = [given / "meta.json"] if (given / "meta.json").is_file() else []
    metas = metas or sorted(Path(str(data.get("cache_dir", "data_cache"))).expanduser().glob("prepared/*/meta.json"))
    found = []
    for file in metas:
        try:
            meta = json.loads(file.read_text())
            made = (meta["source"]["spec"], meta["source"]["max_documents"], meta["tokenizer"]["spec"])
            same = file.parent == given or (*made, meta["val_fraction"]) == tuple(data.get(k) for k in MATCH_KEYS)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if same and (fingerprint is None or meta["tokenizer"]["fingerprint"] == fingerprint):
            found.append(file.parent)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def val_tokens(raw: dict[str, Any] | None, fingerprint: str | None, build: bool) -> tuple[Any, str | None]:
    """The run's validation tokens (1-D), or None and why not. Only reads a prepared cache unless `build`."""
    if not raw or "data" not in raw:
        return None, "no train_config.yaml with a data section"
    from data.prepare import prepare_data
    from data.prepared import PreparedData

    try:
        if build:
            from core.config import config_from_dict

            return prepare_data(config_from_dict(raw).data, progress=False, log=lambda *_: None).tokens("val"), None
        path = find_prepared(raw["data"], fingerprint)
        if path is None:
            return None, f"dataset '{raw['data'].get('dataset')}' is not prepared here (add --prepare-val)"
        return PreparedData.open(path).tokens("val"), None
    except (UserError, OSError) as exc:
        return None, f"validation data unavailable ({str(exc).splitlines()[0]})"


def val_windows(tokens: Any, seq_len: int, max_tokens: int) -> np.ndarray | None:
    """Non-overlapping (N, seq_len + 1) windows from the start of the split (at most max_tokens targets)."""
    n = len(tokens) if max_tokens == 0 else min(len(tokens), max_tokens + 1)
    rows = (n - 1) // seq_len
    if rows < 1:
        return None
    idx = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return np.asarray(tokens[: rows * seq_len + 1])[idx]


def validation(path: Path, cfg, args: argparse.Namespace, memo: dict) -> tuple[np.ndarray | None, str | None]:
    """(windows of the run's val tokens, None) or (None, why not); the split is read once per data config."""
    if args.val_tokens < 0:
        return None, "skipped (--val-tokens -1)"
    raw = read_train_config(path) or {}
    own = load_tokenizer(None, path, cfg.vocab_size).fingerprint() if has_tokenizer(path) else None
    key = (json.dumps(raw.get("data"), sort_keys=True), own)
    if key not in memo:
        memo[key] = val_tokens(raw, own, args.prepare_val)
    tokens, note = memo[key]
    if tokens is None:
        return None, note
    seq_len = min(cfg.max_seq_len, int((raw.get("training") or {}).get("seq_len", cfg.max_seq_len)))
    windows = val_windows(tokens, seq_len, args.val_tokens)
    if windows is None:
        return None, f"validation split has only {len(tokens)} tokens"
    if windows.max() >= cfg.vocab_size:
        return None, f"validation tokens exceed the model's vocab_size {cfg.vocab_size}"
    return windows, None


def evaluate(path: Path, args: argparse.Namespace, cases, backend: tuple[str, str], memo: dict) -> dict[str, Any]:
    cfg = read_model_config(path)
    tok = load_tokenizer(args.tokenizer, path, cfg.vocab_size)
    gen, model, cfg = load_backend(*backend, path, args.dtype)
    pairs = [case_tokens(case, lambda text: encode_prompt(tok, text)) for case in cases]
    records = []
    for case, (rank, logprobs) in zip(cases, gen.score_continuations(model, pairs), strict=True):
        values = (case.name, case.prompt, case.expect, rank, rank <= args.top_k, sum(logprobs))
        records.append(dict(zip(CASE_KEYS, (*values, sum(logprobs) / len(logprobs)), strict=True)))
    windows, note = validation(path, cfg, args, memo)
    state = read_trainer_state(path)
    return {
        "checkpoint": str(path),
        "step": state.get("step"),
        "tokens": state.get("tokens_seen"),
        "val_loss": gen.mean_loss(model, windows) if windows is not None else None,
        "top1": sum(r["rank"] == 1 for r in records) / len(records),
        "topk": sum(r["hit"] for r in records) / len(records),
        "k": args.top_k,
        "cases": records,
        "_note": note,
    }


def mean_logprob(record: dict[str, Any]) -> float:
    return sum(c["mean_logprob"] for c in record["cases"]) / len(record["cases"])


def table(records: list[dict[str, Any]], k: int) -> str:
    head = ("checkpoint", "step", "tokens", "val_loss", "val_ppl", "top1", f"top{k}", "mean_logprob")
    rows = [head]
    for r in records:
        loss = r["val_loss"]
        rows.append((
            Path(r["checkpoint"]).name,
            "-" if r["step"] is None else str(r["step"]),
            "-" if r["tokens"] is None else human_count(r["tokens"]),
            "-" if loss is None else f"{loss:.4f}",
            "-" if loss is None else f"{math.exp(min(loss, 700)):.2f}",
            f"{r['top1']:.3f}",
            f"{r['topk']:.3f}",
            f"{mean_logprob(r):.3f}",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    lines = [line(row) for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def write_out(records: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(records, indent=2) + "\n")
        return
    summary = ("checkpoint", "step", "tokens", "val_loss", "top1", "topk", "k")
    with path.open("w", newline="") as f:  # one row per (checkpoint, case), checkpoint columns repeated
        writer = csv.writer(f)
        writer.writerow([*summary, *(f"case_{key}" for key in CASE_KEYS)])
        for r in records:
            for case in r["cases"]:
                writer.writerow([r[key] for key in summary] + [case[key] for key in CASE_KEYS])


def plot(records: list[dict[str, Any]], path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] if r["step"] is not None else i for i, r in enumerate(records)]
    has_val = any(r["val_loss"] is not None for r in records)
    fig, axes = plt.subplots(1, 3 if has_val else 2, figsize=(13 if has_val else 9, 3.6))
    axes[0].plot(steps, [r["top1"] for r in records], "o-", label="top-1")
    axes[0].plot(steps, [r["topk"] for r in records], "s-", label=f"top-{k}")
    axes[0].set(title="case hit rate", ylim=(-0.05, 1.05), xlabel="step")
    axes[0].legend()
    axes[1].plot(steps, [mean_logprob(r) for r in records], "o-", color="tab:green")
    axes[1].set(title="mean log-prob per expected token", xlabel="step")
    if has_val:
        pairs = [(s, r["val_loss"]) for s, r in zip(steps, records, strict=True) if r["val_loss"] is not None]
        axes[2].plot(*zip(*pairs, strict=True), "o-", color="tab:red")
        axes[2].set(title="validation loss", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None, fast_blas: bool = False) -> list[dict[str, Any]]:
    from tqdm import tqdm

    args = parse_args(argv)
    backend = pick_backend(args.backend)
    if backend[0] == "mlx" and fast_blas:
        from mlx_model.blas import ensure_fast_blas

        ensure_fast_blas()  # Linux: re-exec with OpenBLAS preloaded (this process never runs torch)
    paths = expand(args.checkpoints)
    cases = load_cases(args.cases)
    for path in paths:
        read_model_config(path)  # every checkpoint readable before the long part starts
    memo: dict = {}
    records, notes = [], Counter()
    for path in tqdm(paths, desc="checkpoints", unit="ckpt", file=sys.stderr, disable=None):
        record = evaluate(path, args, cases, backend, memo)
        note = record.pop("_note")
        if note:
            notes[note] += 1
        records.append(record)
    records.sort(key=lambda r: (r["step"] is None, r["step"] or 0, Path(r["checkpoint"]).name == "final.ckpt"))
    for note, count in sorted(notes.items()):
        print(f"note: no validation loss for {count} of {len(paths)} checkpoints: {note}", file=sys.stderr)
    print(table(records, args.top_k))
    if args.out:
        write_out(records, Path(args.out))
        print(f"wrote {args.out}", file=sys.stderr)
    if args.plot:
        plot(records, Path(args.plot), args.top_k)
        print(f"wrote {args.plot}", file=sys.stderr)
    return records


if __name__ == "__main__":
    run_cli(lambda: main(fast_blas=True))
