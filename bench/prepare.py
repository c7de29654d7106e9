"""Data preparation throughput: our prepare_data vs the raw encoders on the same text, per core and in total.

    python bench/prepare.py [--dataset builtin] [--tokenizer gpt2] [--copies 4] [--repeat 3] [--json out.json]
    python bench/prepare.py --first-step-gb 2      # time to the first optimizer step, data.prepare: ahead

Raw encoders, in this process, on a list already in memory: `tokenizers` encode_batch and
encode_batch_fast (Rust threads, every core), tiktoken encode_batch (threads, every core; GPT-2 only),
and each one on a single core (one document at a time) for the per-core rate. Ours is timed end to
end (read the jsonl, hash, encode, split, write shards + meta, fsync), with its fast path (tiktoken
for the packaged GPT-2) and without it (data.fast_gpt2: false). Rounds alternate the order so drift
hits every variant. Then one prepare in a fresh process reports its peak RSS (ru_maxrss).
tokens/s use the raw token count (EOS excluded). --json PATH also writes the figures (bench/run_all.py).

--first-step-gb N writes an N GB jsonl (the built-in articles, numbered copies), then times `python
train_cuda.py --config config.yaml --data.prepare ahead --data.shard_tokens 5000000` from its start to its
first optimizer step's log line (the background prepare working the while), then prepares the whole corpus
in a fresh process and reports its wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["TOKENIZERS_PARALLELISM"] = "true"

from tinyllama.core.config import DataConfig  # noqa: E402
from tinyllama.core.hardware import cpu_name  # noqa: E402
from tinyllama.data.encode import cores  # noqa: E402
from tinyllama.data.fast_gpt2 import is_gpt2, tiktoken_gpt2  # noqa: E402
from tinyllama.data.prepare import prepare_data  # noqa: E402
from tinyllama.data.sources import resolve_source  # noqa: E402
from tinyllama.data.tokenizer import load_tokenizer  # noqa: E402

# a prepare in a fresh process: prints wall seconds and peak RSS in bytes (core.hardware.peak_rss_bytes: its own
# peak, not that of this larger process, which Linux's ru_maxrss would carry across exec).
CHILD = """
import sys, time
from tinyllama.core.config import DataConfig
from tinyllama.core.hardware import peak_rss_bytes
from tinyllama.data.prepare import prepare_data
start = time.perf_counter()
prepare_data(DataConfig(dataset=sys.argv[1], tokenizer=sys.argv[2], cache_dir=sys.argv[3]), False, log=lambda *_: None)
print(time.perf_counter() - start, peak_rss_bytes())
"""


def peak_rss(corpus: Path, tokenizer: str, cache: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one prepare in a fresh process, imports included."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(corpus), tokenizer, str(cache)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return float(out[0]), int(out[1])


def first_step(gigabytes: float, cache_dir: str) -> None:
    """Time to the first step with data.prepare: ahead on a generated corpus, then a full prepare's peak RSS."""
    docs = [d for d in resolve_source("builtin", cache_dir=cache_dir).documents() if d]
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # the data dir's disk, not /tmp's
        corpus, size, copy = Path(tmp) / "corpus.jsonl", 0, 0
        with open(corpus, "w", encoding="utf-8") as f:
            while size < gigabytes * 2**30:
                for doc in docs:
                    size += f.write(json.dumps({"text": f"Copy {copy}. {doc}"}) + "\n")
                copy += 1
        cache = Path(tmp) / "cache"
        argv = [sys.executable, "train_cuda.py", "--config", "config.yaml", "--data.dataset", str(corpus),
                "--data.prepare", "ahead", "--data.shard_tokens", "5000000", "--data.cache_dir", str(cache),
                "--training.max_steps", "1", "--training.eval_every", "0", "--training.log_every", "1",
                "--output.dir", str(Path(tmp) / "ckpt"), "--output.logs", str(Path(tmp) / "logs")]  # fmt: skip
        start, ready, first, lines = time.perf_counter(), None, None, []
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            lines.append(line)
            ready = ready or (time.perf_counter() - start if "prepare ahead:" in line else None)
            first = first or (time.perf_counter() - start if line.startswith("step 1/") else None)
        if proc.wait() or first is None:
            raise SystemExit(f"train_cuda.py failed (exit {proc.returncode}):\n{''.join(lines[-5:])}")
        rss_wall, rss = peak_rss(corpus, "gpt2", cache)  # resumes the background prepare's shards, then finishes
    print(f"machine: {platform.machine()} {cpu_name()}, {cores()} cores usable")
    print(f"corpus: {size / 2**30:.2f} GB jsonl ({copy} copies of the built-in articles), GPT-2")
    print(
        f"train_cuda.py --data.prepare ahead: first block ready at {ready:.1f} s, first optimizer step at {first:.1f} s"
    )
    print(f"the rest of the prepare in a fresh process: {rss_wall:.0f} s wall, peak RSS {rss / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--copies", type=int, default=2, help="repeat the corpus to get a few MB of text")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds; medians are reported")
    parser.add_argument("--cache-dir", default="data_cache", help="where the built-in corpus extraction is cached")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--first-step-gb", type=float, help="only time the first step on a corpus of this size")
    args = parser.parse_args()
    if args.first_step_gb:
        return first_step(args.first_step_gb, args.cache_dir)

    docs = [d for d in resolve_source(args.dataset, cache_dir=args.cache_dir).documents() if d] * args.copies
    tokenizer = load_tokenizer(args.tokenizer, corpus=docs)
    backend = tokenizer.backend
    encoding = tiktoken_gpt2() if is_gpt2(tokenizer) else None
    n_cores = cores()
    megabytes = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        spec = str(Path(tmp) / "tokenizer")
        tokenizer.save(spec)  # ours loads it the way the trainers do, from a path

        n_tokens = sum(len(e.ids) for e in backend.encode_batch(docs[: len(docs) // args.copies]))  # warm-up
        fresh = itertools.count()

        def raw() -> None:
            nonlocal n_tokens
            n_tokens = sum(len(e.ids) for e in backend.encode_batch(docs, add_special_tokens=False))

        def ours(fast: bool) -> Callable[[], None]:
            def run() -> None:  # a new cache directory each time: always a full prepare, never a cache hit
                cache = str(Path(tmp) / f"cache{next(fresh)}")
                cfg = DataConfig(dataset=str(corpus), tokenizer=spec, cache_dir=cache, fast_gpt2=fast)
                prepared = prepare_data(cfg, progress=False, log=lambda *_: None)
                assert sum(prepared.meta["tokens"].values()) == n_tokens + len(docs)

            return run

        runs: dict[str, Callable[[], None]] = {
            "raw encode_batch": raw,
            "raw encode_batch_fast": lambda: backend.encode_batch_fast(docs, add_special_tokens=False),
            "1 core tokenizers encode": lambda: [backend.encode(d, add_special_tokens=False) for d in docs],
            "prepare_data": ours(True),
        }
        if encoding is not None:
            runs["raw tiktoken encode_batch"] = lambda: encoding.encode_ordinary_batch(docs, num_threads=n_cores)
            runs["1 core tiktoken encode"] = lambda: [encoding.encode_ordinary(d) for d in docs]
            runs["prepare_data without tiktoken"] = ours(False)
        wall: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        load_before = os.getloadavg()[0]
        for round_ in range(args.repeat):
            order = list(runs.items())
            for name, run in order if round_ % 2 == 0 else order[::-1]:  # alternate the order: drift hits all
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
        load_after = os.getloadavg()[0]
        rss_wall, rss = peak_rss(corpus, spec, Path(tmp) / "rss-cache")

    rate = {name: n_tokens / statistics.median(ts) for name, ts in wall.items()}
    per_core = {name: n_tokens / statistics.median(ts) for name, ts in cpu.items()}  # tokens per CPU-second
    print(f"machine: {platform.machine()} {cpu_name()}, {n_cores} cores usable; python {platform.python_version()}")
    print(f"corpus: {args.dataset} x{args.copies} = {len(docs)} documents, {megabytes:.1f} MB, {n_tokens:,} tokens")
    print(f"tokenizer: {args.tokenizer} (vocab {tokenizer.vocab_size}); rounds: {args.repeat} (median)")
    print(f"load average (1 min) before/after: {load_before:.1f} / {load_after:.1f}")
    for name, value in rate.items():
        print(
            f"  {name:30s} {value / 1e3:8.1f}k tok/s   {per_core[name] / 1e3:7.1f}k tok/CPU-s"
            f"   wall {statistics.median(wall[name]):6.2f} s   cpu {statistics.median(cpu[name]):6.2f} s"
        )
    for ref in ("raw encode_batch", "raw encode_batch_fast", "raw tiktoken encode_batch"):
        if ref in rate:
            print(f"ratio prepare_data / {ref + ':':27s} {rate['prepare_data'] / rate[ref]:.2f}")
    print(f"prepare in a fresh process: {rss_wall:.2f} s wall (imports included), peak RSS {rss / 2**20:.0f} MiB")
    if args.json:
        figures = {"machine": cpu_name(), "cores": n_cores, "tokens": n_tokens, "megabytes": megabytes}
        figures |= {"documents": len(docs), "tok_per_s": rate, "tok_per_cpu_s": per_core, "peak_rss": rss}
        figures |= {"load_before": load_before, "load_after": load_after}
        Path(args.json).write_text(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
