"""Run every benchmark and rewrite the generated section of docs/benchmarks.md (`make bench`).

    python bench/run_all.py                       # everything (~30 min on 2 CPU cores, minutes on a Mac or GPU)
    python bench/run_all.py --quick               # tiny settings: a smoke pass of every bench
    python bench/run_all.py --only generate --only loss --doc /tmp/benchmarks.md

Each bench runs in its own processes: bench/train_mlx.py, train_torch.py, prepare.py, loss.py and scaling.py
write their figures with --json; bench/generate.py's printed lines are read. `imports` times the start-up of
the training and inference entry points (a 2-step smoke run and a 1-token generation, warm) and reads their
`-X importtime`: what they import, and whether torch._dynamo or transformers is on the path. A bench that
fails or runs out of time gets a row saying so; the others still run. The section between
`<!-- make bench: begin -->` and `<!-- make bench: end -->` is rewritten (inserted before the first `## `
heading when missing) and the rest of the file is kept byte for byte; with --only, the other benches' rows
are kept from the earlier run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyllama.core.cli import human_bytes  # noqa: E402
from tinyllama.core.hardware import cpu_name, system_memory_bytes  # noqa: E402
from tinyllama.mlx_model.blas import find_openblas  # noqa: E402


def bench_module(name: str):
    """bench/<name>.py as the module bench_<name> (bench/ stays off sys.path: its names are generic)."""
    if f"bench_{name}" not in sys.modules:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[f"bench_{name}"]


scaling = bench_module("scaling")
BEGIN, END = "<!-- make bench: begin -->", "<!-- make bench: end -->"
SMOKE = ["--config", "configs/smoke.yaml"]
QUICK_STEP = [*SMOKE, "--steps", "1", "--rounds", "1", "--batch-size", "2", "--seq-len", "32"]
QUICK_GENERATE = [*SMOKE, "--new-tokens", "8", "--prompt-tokens", "8", "--repeats", "1"]
# name -> its runs, each (full arguments, --quick arguments or None: not run by --quick)
BENCHES: dict[str, list[tuple[list[str], list[str] | None]]] = {
    "train_mlx": [
        (["--steps", "4", "--rounds", "3", "--batch-size", "4", "--seq-len", "128"], QUICK_STEP),
        (["--steps", "3", "--rounds", "3", "--batch-size", "8", "--seq-len", "256"], None),
    ],
    "train_torch": [
        (["--steps", "5", "--rounds", "3"], QUICK_STEP),
        (["--steps", "5", "--rounds", "3", "--compile"], None),  # ~4 min here: inductor compiles both models
    ],
    "generate": [(["--threads", "1", "--repeats", "5"], QUICK_GENERATE)],
    "prepare": [([], ["--copies", "1", "--repeat", "1"])],
    "loss": [([], [*SMOKE, "--batch-size", "2", "--seq-len", "32", "--repeats", "1"])],
    "imports": [([], ["--quick"])],
    "scaling": [(["--budget", "480"], ["--quick"])],
}
TIMEOUT_S = 1500
GENERATE_LINE = re.compile(r"^(mlx|torch)\s+(greedy|sampled)\s+ours\s+([\d.]+) tok/s\s+(\S+)\s+([\d.]+) tok/s")
AGREE_LINE = re.compile(r"^(mlx|torch)\s+greedy tokens identical to \S+: (\d+) of (\d+)")


def x(ratio: float) -> str:
    return f"**{ratio:.2f}x**"


def rows_train(data: dict, mlx: bool) -> list[list[str]]:
    side, ref = ("MLX", "mlx-lm's `llama.Model`") if mlx else (f"torch ({data['device']})", "transformers' Llama")
    what = f"{side} training step vs {ref}, {data['batch_size']} x {data['seq_len']}"
    if data.get("compile"):
        what += ", both under `torch.compile`"
    what += f" (MFU: of the {data['peak_of']})"
    ours, theirs = (
        f"{data[k]:,.0f} tok/s, MFU {100 * data[m]:.1f}%" for k, m in (("ours", "mfu"), ("reference", "reference_mfu"))
    )
    return [[what, ours, theirs, x(data["ratio"])]]


def rows_generate(stdout: str) -> list[list[str]]:
    """bench/generate.py writes no JSON file (it belongs to another change): its result lines are read."""
    lines = stdout.splitlines()
    agree = {m[1]: f" (greedy tokens identical: {m[2]} of {m[3]})" for m in map(AGREE_LINE.match, lines) if m}
    rows = []
    for m in filter(None, map(GENERATE_LINE.match, lines)):
        side, mode, ours, ref, theirs = m[1], m[2], float(m[3]), m[4], float(m[5])
        what = f"{'MLX' if side == 'mlx' else 'torch'} {mode} generation vs `{ref}`"
        what += agree.get(side, "") if mode == "greedy" else ""
        rows.append([what, f"{ours:.1f} tok/s", f"{theirs:.1f} tok/s", x(ours / theirs)])
    if not rows:
        raise ValueError("no result lines in its output (did its format change?)")
    return rows


def rows_prepare(data: dict) -> list[list[str]]:
    rate, rows = data["tok_per_s"], []
    for ref in ("encode_batch", "encode_batch_fast", "tiktoken encode_batch"):
        if f"raw {ref}" not in rate:  # tiktoken: GPT-2 only
            continue
        what = f"`prepare_data` end to end vs raw `{ref}` ({data['tokens']:,} tokens, {data['megabytes']:.1f} MB)"
        ours, theirs = rate["prepare_data"], rate[f"raw {ref}"]
        rows.append([what, f"{ours / 1e3:.1f}k tok/s", f"{theirs / 1e3:.1f}k tok/s", x(ours / theirs)])
    if "peak_rss" in data:
        rows.append(["`prepare_data` peak RSS (fresh process)", human_bytes(data["peak_rss"]), "", ""])
    return rows


def rows_loss(data: dict) -> list[list[str]]:
    def cell(v: dict) -> str:
        return f"{v['seconds'] * 1e3:,.0f} ms" + (f", {human_bytes(v['memory'])}" if v["memory"] else "")

    rows = []
    for row, r in data["rows"].items():
        before, after = r[r["before"]], r[r["after"]]
        ratio = x(r["ratio"])  # the median of the turns' ratios (bench/loss.py)
        rows.append([f"{row}: {r['after']} vs {r['before']}", cell(after), cell(before), ratio])
    return rows


def rows_scaling(data: dict) -> tuple[list[list[str]], str]:
    n, ran = len(data["results"]), sum(r["status"] == "ok" for r in data["results"])
    what = f"training tok/s and peak memory, {n} backend x size runs (table below)"
    row = [what, f"{ran} run, {n - ran} not run here (budget {data['budget_s']:.0f} s)", "", ""]
    text = f"### Scaling: training tokens/s and peak memory\n\n{data['tokens']} tokens per step, {data['steps']} "
    text += "timed steps after the warm-up, each size in its own process; CPU peaks are the process's peak RSS "
    text += f"(Python and the framework included).\n\n{scaling.table(data['results'])}\n"
    if data.get("mac"):
        text += f"\nMetal GPU: {data.get('gpu')}."
    if data.get("comparison"):
        text += f"\n{data['comparison']}."
    return [row], text.rstrip()


def importtime(stderr: str) -> list[tuple[int, int, str]]:
    """(depth, cumulative microseconds, module) of each `-X importtime` line, over every process of a run."""
    found = (re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)", line) for line in stderr.splitlines())
    return [(len(m[2]) // 2, int(m[1]), m[3]) for m in found if m]


def importer(rows: list[tuple[int, int, str]], module: str) -> str:
    """'no', or who imported `module`: the nearest tinyllama module above it, else the outermost import."""
    for i, (depth, _, name) in enumerate(rows):
        if name == module:
            chain = []
            for d, _, parent in rows[i + 1 :]:  # importtime lists a module's parent after it, one level up
                if d < depth:
                    chain.append(parent)
                    depth = d
            if not chain:
                return "yes, at run time (a function's import)"
            return f"yes, via {next((n for n in chain if n.startswith('tinyllama')), chain[-1])}"
    return "no"


def run(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(cmd[1]).name}: " + (done.stderr.strip().splitlines() or ["failed"])[-1])
    return time.perf_counter() - start, done.stderr


def summary(shown: str, found: list[tuple[int, int, str]]) -> tuple[float, str]:
    """Total top-level import seconds of a run, and its row: heavy modules, the three heaviest imports."""
    top: dict[str, int] = {}
    for depth, us, name in found:
        if depth == 0:
            top[name] = top.get(name, 0) + us  # a re-executed process imports some twice
    heavy = ", ".join(f"{n} {us / 1e6:.2f} s" for n, us in sorted(top.items(), key=lambda t: -t[1])[:3])
    flags = " | ".join(importer(found, m) for m in ("torch._dynamo", "transformers"))
    return sum(top.values()) / 1e6, f"| {shown} | {sum(top.values()) / 1e6:.2f} s | {flags} | {heavy} |"


def profile_entry_points(quick: bool) -> tuple[list[list[str]], str]:
    """Warm wall time and imports of the trainers (2 smoke steps) and infer.py (1 token), against importing
    the framework alone; which heavy modules each pulls in."""
    repeats, profile = (1 if quick else 3), {"PYTHONPROFILEIMPORTTIME": "1"}
    blas = {"LD_PRELOAD": find_openblas()} if platform.system() == "Linux" and find_openblas() else {}
    rows, table = [], ["| entry point | imports | torch._dynamo | transformers | heaviest imports |"]
    table.append("| --- | ---: | --- | --- | --- |")
    bare = {}  # the framework's own start-up: each entry point's reference
    for b, stmt in (
        ("torch", "import torch"),
        ("mlx", "import mlx.core, mlx.nn, mlx.optimizers"),
        ("torch-train", "import torch; torch.optim.AdamW([torch.zeros(1, requires_grad=True)])"),
    ):
        cmd, env = [sys.executable, "-c", stmt], blas if b == "mlx" else {}
        imports, line = summary(f"reference: `python -c '{stmt}'`", importtime(run(cmd, {**env, **profile})[1]))
        bare[b] = (stmt, imports, min(run(cmd, env)[0] for _ in range(repeats)))
        table.append(line)
    with tempfile.TemporaryDirectory() as tmp:
        train = [*SMOKE, "--training.max_steps", "2", "--data.cache_dir", f"{tmp}/cache", "--output.logs", tmp]
        entries = (("train_cuda.py", "torch"), ("train_mlx.py", "mlx"), ("infer.py", "torch"), ("infer.py", "mlx"))
        for script, b in entries:
            if script == "infer.py":
                args = ["--ckpt", f"{tmp}/{b}/final.ckpt", "--max-new-tokens", "1", "-p", "The", "--backend", b]
                shown = f"`infer.py --backend {b}`, 1 new token"
            else:
                args = [*train, "--output.dir", f"{tmp}/{b}", "--output.overwrite", "true"]
                shown = f"`{script}`, smoke config, 2 steps"
            cmd = [sys.executable, script, *args]
            run(cmd)  # cold: prepares the data and writes the checkpoint infer.py reads
            imports, line = summary(shown, importtime(run(cmd, profile)[1]))
            table.append(line)
            wall = min(run(cmd)[0] for _ in range(repeats))
            stmt, bare_imports, bare_wall = bare["torch-train" if script == "train_cuda.py" else b]
            if script == "infer.py":
                what = f"start-up: {shown}, end to end (warm, best of {repeats}) vs `python -c '{stmt}'`"
                rows.append([what, f"{wall:.2f} s", f"{bare_wall:.2f} s", x(bare_wall / wall)])
            else:
                what = f"imports of {shown} (the whole run: {wall:.1f} s) vs `python -c '{stmt}'`"
                rows.append([what, f"{imports:.2f} s", f"{bare_imports:.2f} s", x(bare_imports / imports)])
    text = "### Start-up: what the entry points import\n\n`-X importtime` of every process of each run (on Linux "
    text += 'MLX re-executes itself with OpenBLAS preloaded): seconds, cumulative, of top-level imports. "At run '
    text += "time\": imported by a function call, not by a module; the AdamW reference shows whether torch's own "
    text += "optimizer does it (its `add_param_group` is wrapped in `torch._disable_dynamo`).\n\n"
    return rows, text + "\n".join(table)


def run_bench(name: str, args: list[str], tmp: Path) -> tuple[list[list[str]], str]:
    """One bench -> (rows of [what, ours, reference, ratio], extra markdown); raises when it fails."""
    if name == "imports":
        return profile_entry_points(quick="--quick" in args)
    out = tmp / f"{name}.json"
    cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args]
    cmd += [] if name == "generate" else ["--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1])
    if name == "generate":
        return rows_generate(done.stdout), ""
    data = json.loads(out.read_text())
    if name == "scaling":
        return rows_scaling(data)
    if name in ("train_mlx", "train_torch"):
        return rows_train(data, mlx=name == "train_mlx"), ""
    return (rows_prepare if name == "prepare" else rows_loss)(data), ""


def versions() -> str:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    blas = " (Metal)" if platform.system() == "Darwin" else " (CPU backend, reference BLAS)"
    if platform.system() == "Linux" and find_openblas():
        blas = " (CPU backend, OpenBLAS preloaded)"
    names = ("torch", "mlx", "mlx-lm", "transformers", "tokenizers")
    found = ", ".join(f"{n} {version(n)}" + (blas if n == "mlx" else "") for n in names)
    return f"Python {platform.python_version()}, {found}"


def machine() -> str:
    memory = human_bytes(system_memory_bytes())
    cpu = f"{platform.system()} {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, {memory} memory"
    return f"{cpu}, GPU: {scaling.gpu_name() or 'none'}"


def earlier(section: str) -> tuple[dict[str, list[str]], dict[str, str], dict[str, str]]:
    """An earlier generated section's rows (by bench), extra blocks (by bench) and where each bench's
    figures came from ("<date> on <machine>"): its own run, or the run it had kept them from."""
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        name = line.strip("| ").split(" |")[0].strip("`")
        if line.startswith("| `") and name in BENCHES:
            rows.setdefault(name, []).append(line)
    extras = {}
    for name in BENCHES:
        found = re.search(f"<!-- make bench: {name} -->\n(.*?)\n<!-- make bench: {name} end -->", section, re.S)
        if found:
            extras[name] = found[1]
    lines = section.splitlines()
    date = next((line[8:].split(" (")[0] for line in lines if line.startswith("- date: ")), "")
    where = next((line[11:].split("; load average")[0] for line in lines if line.startswith("- machine: ")), "")
    origin = {name: f"{date} on {where}" if where else date for name in BENCHES}
    for line in lines:
        if line.startswith("- kept from the run of ") and ": " in line:
            run, names = line[len("- kept from the run of ") :].rsplit(": ", 1)
            origin |= {name: run for name in names.split(", ") if name in BENCHES}
    return rows, extras, origin


def render(results: dict[str, tuple[list[str], str]], old_section: str, header: dict) -> str:
    """The generated section. results: bench -> (table lines, extra markdown); other benches keep their old rows,
    each named with the date and machine of the run that measured it."""
    old_rows, old_extras, origin = earlier(old_section)
    kept = [n for n in BENCHES if n not in results and (n in old_rows or n in old_extras)]
    lines = ["## Latest `make bench` run (generated)", ""]
    lines.append("Written by `make bench` (`python bench/run_all.py`); rerun it rather than edit by hand. Ratio: ours")
    lines += ["/ the reference's speed, so above 1x ours is faster (start-up: the reference's time / ours).", ""]
    lines.append(f"- date: {header['date']} (ran: {', '.join(results)}; took {header['took']})")
    for run in dict.fromkeys(origin[n] for n in kept):
        lines.append(f"- kept from the run of {run}: {', '.join(n for n in kept if origin[n] == run)}")
    lines += [f"- machine: {header['machine']}; load average {header['load']}", f"- versions: {header['versions']}"]
    lines += ["", "| bench | figure | ours | reference | ratio | command |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for name in BENCHES:
        lines += results[name][0] if name in results else old_rows.get(name, [])
    for name in BENCHES:
        extra = results[name][1] if name in results else old_extras.get(name, "")
        if extra:
            lines += ["", f"<!-- make bench: {name} -->", extra, f"<!-- make bench: {name} end -->"]
    return "\n".join(lines)


def current_section(doc: str) -> str:
    return doc[doc.index(BEGIN) + len(BEGIN) : doc.index(END)] if BEGIN in doc and END in doc else ""


def write_section(doc: str, section: str) -> str:
    """`doc` with the section between the markers replaced (or inserted before the first `## ` heading)."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in doc and END in doc:
        return doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
    at = doc.find("\n## ")
    at = len(doc) if at < 0 else at + 1
    return doc[:at] + block + "\n\n" + doc[at:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke pass (its figures mean nothing)")
    p.add_argument("--only", action="append", choices=list(BENCHES), help="run this bench only (repeatable)")
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"), help="the file to rewrite")
    args = p.parse_args()
    started, load_before = time.monotonic(), os.getloadavg()[0]
    results: dict[str, tuple[list[str], str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [n for n in BENCHES if n in (args.only or BENCHES)]:
            lines, extras = [], []
            for full, quick in BENCHES[name]:
                bench_args = quick if args.quick else full
                if bench_args is None:
                    continue
                shown = "bench/run_all.py --only imports" if name == "imports" else f"bench/{name}.py"
                command = " ".join(["python", shown, *bench_args])
                print(f"[{time.monotonic() - started:5.0f} s] {command}", flush=True)
                try:
                    rows, extra = run_bench(name, bench_args, Path(tmp))
                except Exception as exc:  # one bench failing never stops the others: its row says why
                    rows, extra = [["failed", f"{type(exc).__name__}: {str(exc)[:200]}", "", ""]], ""
                lines += [f"| `{name}` | {' | '.join(row)} | `{command}` |" for row in rows]
                extras += [extra] if extra else []
                print("\n".join(lines[-len(rows) :]), flush=True)
            results[name] = (lines, "\n\n".join(extras))
    took = f"{(time.monotonic() - started) / 60:.0f} min" + ("; --quick: smoke settings, not figures" * args.quick)
    header = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "took": took, "machine": machine()}
    header |= {"load": f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after", "versions": versions()}
    doc_path = Path(args.doc)
    doc = doc_path.read_text(encoding="utf-8")
    doc_path.write_text(write_section(doc, render(results, current_section(doc), header)), encoding="utf-8")
    print(f"rewrote the generated section of {doc_path}")


if __name__ == "__main__":
    main()
