"""Score checkpoints on probe cases and validation loss: a table by step, JSON/CSV records, a plot.

    python evaluate_checkpoints.py --checkpoints 'checkpoints/*.ckpt' --tokenizer gpt2 --top-k 5 \\
        --cases cases/wiki_basics.yaml --out results.json --plot eval.png

Per checkpoint: step and tokens seen (trainer_state.json); loss and perplexity on the run's validation
set, the very windows the trainer evaluated (data.loader.val_windows), so val_loss equals the trainer's
logged one (skipped with a note when that data is not prepared here); and per case the rank of the
expected continuation's first token, whether it is in the top 1 / top k, and the log-probability of the
whole expected continuation (teacher-forced). Case file format: docs/inference.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import io
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tinyllama.convert.model_source import resolve_model
from tinyllama.core.backend import BACKENDS, load_backend, pick
from tinyllama.core.cases import case_tokens, load_cases
from tinyllama.core.checkpoint import read_train_config, read_trainer_state
from tinyllama.core.cli import (
    ArgumentParser,
    UserError,
    exit_without_teardown,
    human_count,
    progress,
    run_cli,
)
from tinyllama.core.config import Config, config_from_dict
from tinyllama.core.dtypes import dtype_arg
from tinyllama.core.fs import atomic_path, check_writable, write_text
from tinyllama.core.generate import target_bytes
from tinyllama.core.metrics import bits_per_byte
from tinyllama.core.model_files import read_model_config

DEFAULT_CASES = Path(__file__).resolve().parent / "cases" / "wiki_basics.yaml"
CASE_KEYS = ("name", "prompt", "expect", "rank", "hit", "logprob", "mean_logprob")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="evaluate_checkpoints.py", description=__doc__)
    p.add_argument("--checkpoints", "--model", nargs="+", required=True, help="checkpoint directories or quoted globs")
    p.add_argument("--cases", default=str(DEFAULT_CASES), help="YAML case file (default: cases/wiki_basics.yaml)")
    p.add_argument("--tokenizer", help="gpt2, a HF tokenizer name/directory or tokenizer.json (default: each ckpt's)")
    p.add_argument(
        "--hit-k",
        "--top-k",
        dest="hit_k",
        type=int,
        default=5,
        help="a case hits when its answer ranks <= k (default: %(default)s); --top-k is the same option, the "
        "name older commands use (in infer.py --top-k is a sampling option)",
    )
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="default: %(default)s")
    p.add_argument("--dtype", type=dtype_arg(), help="weights dtype: float32|fp32|f32, bfloat16|bf16, float16|fp16|f16")
    val_help = (
        "validation tokens to score (default: the run's own eval set, training.eval_batches x batch_size windows, "
        "so val_loss equals the trainer's); 0 = the whole split, -1 = skip"
    )
    p.add_argument("--val-tokens", type=int, help=val_help)
    p.add_argument("--prepare-val", action="store_true", help="prepare the run's data when it is not cached yet")
    p.add_argument("--out", help="write records to a .json or .csv file")
    p.add_argument("--plot", help="write a PNG of the metrics against training step")
    args = p.parse_args(argv)
    if args.hit_k < 1:
        p.error("--hit-k must be >= 1")
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


def val_data(run: Config, fingerprint: str | None, build: bool, tokens: dict | None = None) -> tuple[Any, str | None]:
    """The run's prepared data (for its val split), or None and why not. Only reads a prepared cache unless
    `build`. `tokens`: the split sizes the run trained on (its checkpoint's data signature), which the val
    split must have: data prepared by an earlier version split text by tokens, not bytes."""
    from tinyllama.data.prepare import prepare_data
    from tinyllama.data.store import PreparedData, find_prepared

    try:
        path = find_prepared(dataclasses.asdict(run.data), fingerprint, tokens)
        if path is None and build:  # in full, also for an ahead run (its val set is read from the finished data)
            built = prepare_data(dataclasses.replace(run.data, prepare="full"), progress=False, log=lambda *_: None)
            if tokens is None or built.meta["tokens"] == tokens:
                return built, None
            made = built.meta["tokens"]
            return None, (
                f"the run trained on a split of {tokens.get('train')} / {tokens.get('val')} tokens that is no "
                f"longer prepared here (this version prepares {made['train']} / {made['val']}): no val split "
                f"to score it on"
            )
        if path is None:
            return None, f"dataset '{run.data.dataset}' is not prepared here (add --prepare-val)"
        return PreparedData.open(path), None
    except (UserError, OSError) as exc:
        return None, f"validation data unavailable ({str(exc).splitlines()[0]})"


def validation(
    path: Path, fingerprint: str, state: dict[str, Any], args: argparse.Namespace, memo: dict
) -> tuple[Any, str | None]:
    """(windows of the run's val set (data.loader.val_windows), batch size) or (None, why not); the split
    is read once per data config. `state`: the checkpoint's trainer_state.json (its data signature)."""
    if args.val_tokens is not None and args.val_tokens < 0:
        return None, "skipped (--val-tokens -1)"
    raw = read_train_config(path)
    if not raw or "data" not in raw:
        return None, "no train_config.yaml with a data section"
    run = config_from_dict(raw)
    signature = state.get("data_signature")
    tokens = signature.get("tokens") if isinstance(signature, dict) and run.data.prepare != "ahead" else None
    tokens = tokens if isinstance(tokens, dict) else None
    key = (json.dumps(raw.get("data"), sort_keys=True), fingerprint, json.dumps(tokens, sort_keys=True))
    if key not in memo:
        memo[key] = val_data(run, fingerprint, args.prepare_val, tokens)
    data, note = memo[key]
    if data is None:
        return None, note
    t = run.training
    if args.val_tokens is None:
        count = t.eval_batches * t.batch_size  # exactly the trainer's eval set
    else:
        count = max(1, args.val_tokens // t.seq_len) if args.val_tokens else 0  # 0: every window
    try:
        if run.data.prepare == "ahead":  # the held-out end of the first block, as the trainer evaluated
            from tinyllama.data.ahead import finished_val

            windows = finished_val(data, run.data, t.seq_len, count)
        else:
            windows = data.val_windows(t.seq_len, count)
    except UserError:
        return None, f"validation split has only {len(data.tokens('val'))} tokens"
    return (windows, t.batch_size), None


def evaluate(path: Path, args: argparse.Namespace, cases, memo: dict) -> dict[str, Any]:
    from tinyllama.data.tokenizer import checkpoint_tokenizer

    tok = checkpoint_tokenizer(path, args.tokenizer, read_model_config(path).vocab_size)
    name, device = pick(args.backend)
    backend = load_backend(name, path, args.dtype, device)
    pairs = [case_tokens(case, tok.encode_prompt) for case in cases]
    context = backend.config.max_seq_len
    scorable = [i for i, (prompt, cont) in enumerate(pairs) if prompt and cont and len(cont) < context]
    scores = dict(zip(scorable, backend.score([pairs[i] for i in scorable]), strict=True))
    records = []
    for i, case in enumerate(cases):
        if i not in scores:  # reported as such in the table and records, not a crash
            n = len(pairs[i][1])
            why = f"expect is {n} tokens, the context only {context}" if n else "expect encodes to no tokens"
            values = (case.name, case.prompt, case.expect, None, False, None, None)
            records.append({**dict(zip(CASE_KEYS, values, strict=True)), "error": why})
            continue
        rank, logprobs = scores[i]
        values = (case.name, case.prompt, case.expect, rank, rank <= args.hit_k, sum(logprobs))
        records.append(dict(zip(CASE_KEYS, (*values, sum(logprobs) / len(logprobs)), strict=True)))
    scored = [r for r in records if r["rank"] is not None] or [{"rank": 0, "hit": False}]
    state = read_trainer_state(path)
    val, note = validation(path, tok.fingerprint(), state, args, memo)
    if val is not None and val[0].max() >= backend.config.vocab_size:
        val, note = None, f"validation tokens exceed the model's vocab_size {backend.config.vocab_size}"
    val_loss = val_bpb = None
    if val is not None:
        from tinyllama.data.token_bytes import token_bytes

        val_loss = backend.mean_loss(*val)
        val_bpb = bits_per_byte(val_loss, *target_bytes(val[0], token_bytes(tok, backend.config.vocab_size)))
    return {
        "checkpoint": str(path),
        "step": state.get("step"),
        "tokens": state.get("tokens_seen"),
        "val_loss": val_loss,
        "val_bpb": val_bpb,
        "top1": sum(r["rank"] == 1 for r in scored) / len(scored),  # over the cases that could be scored
        "topk": sum(r["hit"] for r in scored) / len(scored),
        "k": args.hit_k,
        "cases": records,
        "_note": note,
    }


def mean_logprob(record: dict[str, Any]) -> float:
    values = [c["mean_logprob"] for c in record["cases"] if c["mean_logprob"] is not None]
    return sum(values) / len(values) if values else float("nan")


def table(records: list[dict[str, Any]], k: int) -> str:
    head = ("checkpoint", "step", "tokens", "val_loss", "val_bpb", "val_ppl", "top1", f"top{k}", "mean_logprob")
    rows = [head]
    for r in records:
        loss = r["val_loss"]
        rows.append((
            Path(r["checkpoint"]).name,
            "-" if r["step"] is None else str(r["step"]),
            "-" if r["tokens"] is None else human_count(r["tokens"]),
            "-" if loss is None else f"{loss:.4f}",
            "-" if r["val_bpb"] is None else f"{r['val_bpb']:.4f}",
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
    """JSON records, or CSV with one row per (checkpoint, case), checkpoint columns repeated; written whole
    or not at all."""
    if path.suffix.lower() == ".json":
        write_text(path, json.dumps(records, indent=2) + "\n")
        return
    summary = ("checkpoint", "step", "tokens", "val_loss", "val_bpb", "top1", "topk", "k")
    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow([*summary, *(f"case_{key}" for key in CASE_KEYS)])
    for r in records:
        for case in r["cases"]:
            writer.writerow([r[key] for key in summary] + [case[key] for key in CASE_KEYS])
    write_text(path, rows.getvalue())


def plot(records: list[dict[str, Any]], path: Path, k: int) -> None:
    """Case hit rate, mean log-prob and validation loss per checkpoint, against tokens seen (loss.png's x axis;
    trainer_state.json's tokens_seen), else the step, else the checkpoint's place in the list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinyllama.core.metrics import token_unit

    if all(r["tokens"] is not None for r in records):
        divisor, xlabel = token_unit(max((r["tokens"] for r in records), default=0))
        xs = [r["tokens"] / divisor for r in records]
    elif all(r["step"] is not None for r in records):
        xs, xlabel = [r["step"] for r in records], "step"
    else:
        xs, xlabel = list(range(len(records))), "checkpoint (in step order)"
    has_val = any(r["val_loss"] is not None for r in records)
    fig, axes = plt.subplots(1, 3 if has_val else 2, figsize=(13 if has_val else 9, 3.8))
    axes[0].plot(xs, [r["top1"] for r in records], "o-", label="top-1")
    axes[0].plot(xs, [r["topk"] for r in records], "s-", label=f"top-{k}")
    axes[0].set(title="case hit rate", ylim=(-0.05, 1.05), ylabel="fraction of cases")
    axes[0].legend()
    axes[1].plot(xs, [mean_logprob(r) for r in records], "o-", color="tab:green")
    axes[1].set(title="mean log-prob per expected token", ylabel="log-prob (nats/token)")
    if has_val:
        pairs = [(x, r["val_loss"]) for x, r in zip(xs, records, strict=True) if r["val_loss"] is not None]
        axes[2].plot(*zip(*pairs, strict=True), "o-", color="tab:red")
        axes[2].set(title="validation loss", ylabel="loss (nats/token)")
        scaled = [r for r in records if r.get("val_bpb") and r["val_loss"]]
        if scaled:  # bits per byte: the loss times a constant of the val set, a second scale on the same axis
            k_bpb = scaled[-1]["val_bpb"] / scaled[-1]["val_loss"]
            right = axes[2].secondary_yaxis("right", functions=(lambda v: v * k_bpb, lambda b: b / k_bpb))
            right.set_ylabel("bits per byte")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)


def main(argv: list[str] | None = None, fast_blas: bool = False) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if fast_blas and pick(args.backend)[0] == "mlx":
        from tinyllama.mlx_model.blas import ensure_fast_blas

        ensure_fast_blas()  # Linux: re-exec with OpenBLAS preloaded (this process never runs torch)
    for option in ("out", "plot"):
        if getattr(args, option):
            check_writable(getattr(args, option), f"--{option}")  # before the long part, not after it
    paths = expand(args.checkpoints)
    cases = load_cases(args.cases)
    local = {path: resolve_model(path) for path in paths}  # a .gguf file or a Hub id becomes a local directory
    for path in paths:
        read_model_config(local[path])  # every checkpoint readable before the long part starts
    memo: dict = {}
    records, notes = [], Counter()
    for path in progress(paths, desc="checkpoints", unit="ckpt"):
        record = {**evaluate(local[path], args, cases, memo), "checkpoint": str(path)}
        note = record.pop("_note")
        if note:
            notes[note] += 1
        records.append(record)
    records.sort(key=lambda r: (r["step"] is None, r["step"] or 0, Path(r["checkpoint"]).name == "final.ckpt"))
    for note, count in sorted(notes.items()):
        print(f"note: no validation loss for {count} of {len(paths)} checkpoints: {note}", file=sys.stderr)
    for case in records[0]["cases"] if records else []:
        if "error" in case:
            print(
                f"note: case '{case['name']}' cannot be scored ({case['error']}); left out of top1/topk",
                file=sys.stderr,
            )
    print(table(records, args.hit_k))
    if args.out:
        write_out(records, Path(args.out))
        print(f"wrote {args.out}", file=sys.stderr)
    if args.plot:
        plot(records, Path(args.plot), args.hit_k)
        print(f"wrote {args.plot}", file=sys.stderr)
    return records


def cli() -> None:
    """The `tinyllama-eval` command."""
    run_cli(lambda: main(fast_blas=True))
    exit_without_teardown()  # ~0.6 s sooner back at the prompt (core.cli)


if __name__ == "__main__":
    cli()
