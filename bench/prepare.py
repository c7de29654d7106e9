"""Data preparation throughput: our prepare_data vs raw `tokenizers` encode_batch on the same text.

    python bench/prepare.py [--dataset builtin] [--tokenizer gpt2] [--copies 4] [--repeat 3] [--json out.json]

Both run in this process on the same documents with the same tokenizer and thread pool. Ours is
timed end to end (read the jsonl, hash, encode, split, write shards + meta, fsync); the baseline
only encodes a list already in memory. tokens/s use the baseline's token count (EOS excluded). --json PATH
also writes the figures as JSON (bench/run_all.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["TOKENIZERS_PARALLELISM"] = "true"

from tinyllama.core.config import DataConfig  # noqa: E402
from tinyllama.core.hardware import cpu_name  # noqa: E402
from tinyllama.data.prepare import prepare_data  # noqa: E402
from tinyllama.data.sources import resolve_source  # noqa: E402
from tinyllama.data.tokenizer import load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--copies", type=int, default=2, help="repeat the corpus to get a few MB of text")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds; medians are reported")
    parser.add_argument("--cache-dir", default="data_cache", help="where the built-in corpus extraction is cached")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args()

    docs = [d for d in resolve_source(args.dataset, cache_dir=args.cache_dir).documents() if d] * args.copies
    tokenizer = load_tokenizer(args.tokenizer, corpus=docs)
    backend = tokenizer.backend
    megabytes = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        spec = str(Path(tmp) / "tokenizer")
        tokenizer.save(spec)  # ours loads it the way the trainers do, from a path

        n_tokens = sum(len(e.ids) for e in backend.encode_batch(docs[: len(docs) // args.copies]))  # warm-up
        names = ("raw encode_batch", "raw encode_batch_fast", "prepare_data")
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}

        def raw() -> None:
            nonlocal n_tokens
            n_tokens = sum(len(e.ids) for e in backend.encode_batch(docs, add_special_tokens=False))

        def raw_fast() -> None:
            backend.encode_batch_fast(docs, add_special_tokens=False)

        fresh = itertools.count()

        def ours() -> None:  # a new cache directory each time: always a full prepare, never a cache hit
            cfg = DataConfig(dataset=str(corpus), tokenizer=spec, cache_dir=str(Path(tmp) / f"cache{next(fresh)}"))
            prepared = prepare_data(cfg, progress=False, log=lambda *_: None)
            assert sum(prepared.meta["tokens"].values()) == n_tokens + len(docs)

        load_before = os.getloadavg()[0]
        for round_ in range(args.repeat):
            runs = [("raw encode_batch", raw), ("raw encode_batch_fast", raw_fast), ("prepare_data", ours)]
            for name, run in runs if round_ % 2 == 0 else runs[::-1]:  # alternate the order: drift hits both
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
        load_after = os.getloadavg()[0]

    rate = {name: n_tokens / statistics.median(ts) for name, ts in wall.items()}
    print(f"machine: {platform.machine()} {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"corpus: {args.dataset} x{args.copies} = {len(docs)} documents, {megabytes:.1f} MB, {n_tokens:,} tokens")
    print(f"tokenizer: {args.tokenizer} (vocab {tokenizer.vocab_size}); rounds: {args.repeat} (median)")
    print(f"load average (1 min) before/after: {load_before:.1f} / {load_after:.1f}")
    for name, value in rate.items():
        print(
            f"  {name:24s} {value / 1e3:8.1f}k tok/s   wall {statistics.median(wall[name]):6.2f} s"
            f"   cpu {statistics.median(cpu[name]):6.2f} s"
        )
    print(f"ratio prepare_data / raw encode_batch:      {rate['prepare_data'] / rate['raw encode_batch']:.2f}")
    print(f"ratio prepare_data / raw encode_batch_fast: {rate['prepare_data'] / rate['raw encode_batch_fast']:.2f}")
    if args.json:
        figures = {"machine": cpu_name(), "tokens": n_tokens, "megabytes": megabytes, "documents": len(docs)}
        figures |= {"tok_per_s": rate, "load_before": load_before, "load_after": load_after}
        Path(args.json).write_text(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
