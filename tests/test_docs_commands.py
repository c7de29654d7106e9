"""The docs are executable promises: every shell command in a ```bash block of README.md and docs/*.md runs here,
offline on the CPU, or is listed in SKIP with the reason it cannot. A new doc command that is neither fails
test_every_doc_command_is_run_or_skipped.

THE RULE: the one change made to a command before it runs (docs/testing.md says the same):
  - a trainer (python train.py / train_mlx.py / train_cuda.py, tinyllama-train, also under mlx.launch) trains 2 steps:
    --training.max_steps 2 replaces the command's own value (a --resume trains 2 steps past the step it resumes);
    unless the command resumes, SHRINK is appended, each key only where the command does not set it itself:
    config.yaml's 6 layers at d_model 64 (4/2 heads, d_ff 128) instead of 384 (its 50k vocabulary stays), batches of
    2 x 32 tokens, no evaluation, 30 documents of the data set, and --output.overwrite true (a block trains its
    alternatives one after the other into one checkpoints/). --dry-run and --help run as written;
  - infer.py / tinyllama-infer generate 4 tokens (--max-new-tokens 4), mlx_lm.generate too (--max-tokens 4);
    mlx_lm.lora runs 2 iterations (--iters 2 replaces the command's value, --val-batches 1).
Everything else runs as written.

Where: each shell block runs its commands in their documented order (a later command uses what an earlier one
wrote: train, then infer on its checkpoint) in one fresh temporary directory that looks like a clone after
`make train`: the repository's files (symlinked; nothing in the repository is written), .venv, a data_cache/ shared
by all, and a copy of one shared run (`python train.py --config config.yaml` under THE RULE) in checkpoints/ and
logs/. What a page tells the reader to provide (DIR/ for mlx_lm.lora, notes/, more.txt, my_chats.jsonl) and what a
skipped download would have left (SmolLM2-135M-Instruct/, ...) are small stand-ins (STAND_INS) made from that run.
Commands run through bash with stdin empty and stdout / stderr written to files, one at a time, TIMEOUT each, with
OMP_NUM_THREADS=1 unless it is set (tiny models on shared cores); a command several pages show runs once in a
session, on the first (README.md, then docs/ by name).

A command passes when it exits 0 (or as expected_status says for this machine), prints no traceback and, for this
project's own commands, writes no progress-bar redraw (\\r) into the redirected output.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 240  # seconds per command; the slowest (mlx.launch's two processes) takes ~15 s on 2 busy cores

TRAINERS = ("train.py", "train_mlx.py", "train_cuda.py")
SHRINK = {
    "--model.d_model": "64",
    "--model.n_heads": "4",
    "--model.n_kv_heads": "2",
    "--model.d_ff": "128",
    "--training.batch_size": "2",
    "--training.seq_len": "32",
    "--training.warmup_steps": "1",
    "--training.eval_every": "0",
    "--training.eval_batches": "1",
    "--training.sample_tokens": "4",
    "--data.max_documents": "30",
    "--output.overwrite": "true",
    "--training.time_budget": "0",  # the speedrun's 10 minutes: the 2 steps instead
}
INFER = {"--max-new-tokens": "4"}
MLX_GENERATE = {"--max-tokens": "4"}
MLX_LORA = {"--iters": "2", "--val-batches": "1"}

# Programs a doc command may start with to be run; any other command must be in SKIP.
RUNNABLE = {
    "python", "echo", "printf", "mlx.launch", "mlx_lm.lora", "mlx_lm.generate", "mlx_lm.fuse",
    "tinyllama-train", "tinyllama-infer", "tinyllama-eval", "tinyllama-convert", "tinyllama-prepare", "tinyllama-serve",
}  # fmt: skip
OURS = ("train.py", "train_mlx.py", "train_cuda.py", "infer.py", "evaluate_checkpoints.py", "convert", "data.prepare")

CUDA_RUN = "configs/gpt2-124m.yaml trains on a CUDA GPU (hardware.accelerator: cuda) on FineWeb-Edu from the Hub"
TORCHRUN = "torchrun over 8 GPUs (NCCL); DDP on 2 CPU processes is tested by tests/test_train_torch.py"
LLAMA_CPP = "llama.cpp / Ollama are not installed here (docs/convert.md says so)"
INSTALLS = "installs packages into the environment (network); tests/test_packaging.py builds and installs the wheel"
MAKE = "`make` itself: creates .venv and installs, then trains or runs the whole suite (CI runs make test)"
NODES = "two GPU machines (8 GPUs each, NCCL) or a Slurm job; two nodes on one host: tests/test_multinode.py"
SERVER = "a server that runs until it is stopped; tests/test_serve_*.py start it and talk to it"
SKIP = {
    "make speedrun": MAKE,
    'python bench/ablate.py --budget 3 --only baseline --only "no qk_norm" --seeds 0 1 2': (
        "three minutes of training per lever and seed; tests/test_bench.py runs bench/ablate.py on the smoke config"
    ),
    # the server (README.md, docs/inference.md)
    "python serve.py --model checkpoints/final.ckpt": SERVER,
    "python serve.py --model checkpoints/final.ckpt --backend mlx --port 8000": SERVER,
    "TINYLLAMA_API_KEY=secret python serve.py --model HuggingFaceTB/SmolLM2-135M-Instruct --host 0.0.0.0": SERVER,
    # docs/training.md, several machines
    "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint gpu-a:29500 --rdzv-id run1 "
    "train_cuda.py --config configs/gpt2-124m.yaml": NODES,
    'srun torchrun --nnodes "$SLURM_NNODES" --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint "$(scontrol show '
    'hostnames "$SLURM_JOB_NODELIST" | head -n 1):29500" --rdzv-id "$SLURM_JOB_ID" train_cuda.py --config '
    "configs/gpt2-124m.yaml --resume auto": NODES,
    # README.md
    "make train": MAKE,
    "make test": MAKE,
    "python train_cuda.py --config configs/gpt2-124m.yaml": CUDA_RUN,
    "torchrun --nproc-per-node 8 train_cuda.py --config configs/gpt2-124m.yaml": TORCHRUN,
    # docs/convert.md
    'llama-cli -m model.q4_0.gguf -p "The history of" -n 64': LLAMA_CPP,
    "llama-server -m model.q4_0.gguf --port 8080": LLAMA_CPP + "; a server that runs until stopped",
    'curl http://localhost:8080/completion -d \'{"prompt": "The history of", "n_predict": 64}\'': (
        "talks to the llama-server above (not run)"
    ),
    "ollama create tinyllama -f Modelfile": LLAMA_CPP,
    'ollama run tinyllama "The history of"': LLAMA_CPP,
    # docs/ecosystem.md
    'pip install "lm-eval[hf]"': INSTALLS,
    "lm_eval --model hf --model_args pretrained=checkpoints/final.ckpt,dtype=float32 --tasks hellaswag,arc_easy "
    "--device cuda --batch_size 16": "CUDA, and the tasks' datasets come from the Hub; tests/test_ecosystem.py runs "
    "lm_eval offline on a local task",
    # docs/finetune.md
    "hf download HuggingFaceTB/SmolLM2-135M-Instruct --local-dir SmolLM2-135M-Instruct": (
        "a Hub download (STAND_INS puts a small Llama directory at SmolLM2-135M-Instruct instead)"
    ),
    # docs/install.md
    'pip install -e ".[mlx,convert]"': INSTALLS,
    # docs/testing.md
    "make test-fast": MAKE,
    ".venv/bin/python -m pytest tests/test_parity.py -q": "runs another file of this suite, which runs it itself",
    # docs/training.md
    "tensorboard --logdir logs": "a server that runs until stopped; tests/test_report.py reads the event files back",
    "mlx.launch --hostfile hosts.json --python /path/to/repo/.venv/bin/python --cwd /path/to/repo train_mlx.py "
    "--config config.yaml": "several Macs over ssh (hosts.json); two local MLX processes run from the command above",
    "mlx.launch --hostfile hosts.json --backend ring --python /path/to/repo/.venv/bin/python --cwd /path/to/repo "
    "train_mlx.py --config config.yaml": (
        "several Macs over ssh (hosts.json); a two-host file on one machine: tests/test_multinode.py"
    ),
    "torchrun --nproc-per-node 8 train_cuda.py --config configs/gpt2-124m.yaml --hardware.distributed fsdp": TORCHRUN,
    "python train_cuda.py --config configs/gpt2-124m.yaml --resume auto --training.max_steps 10000": CUDA_RUN,
    'hf download HuggingFaceFW/fineweb-edu --repo-type dataset --include "sample/10BT/*" --local-dir fineweb-edu': (
        "a Hub download of FineWeb-Edu (tens of GB)"
    ),
    "python -m data.prepare --config configs/gpt2-124m.yaml --data.dataset fineweb-edu/sample/10BT "
    "--data.max_documents 0": "prepares the FineWeb-Edu download above (10B tokens); tests/test_data_prepare.py "
    "prepares parquet files",
    "torchrun --nproc-per-node 8 train_cuda.py --config configs/gpt2-124m.yaml --data.dataset "
    "fineweb-edu/sample/10BT --data.max_documents 0": TORCHRUN,
    "torchrun --nproc-per-node 8 train_cuda.py --config configs/gpt2-124m.yaml --data.dataset fineweb-edu/sample/10BT "
    "--data.max_documents 0 --data.prepare ahead --data.shard_tokens 10000000": TORCHRUN,
    'hf download HuggingFaceFW/fineweb-edu --repo-type dataset --include "sample/10BT/000_00000.parquet" '
    "--local-dir fineweb-edu": "a Hub download of one FineWeb-Edu parquet file (~2 GB)",
    "python train.py --config configs/speedrun.yaml --data.dataset fineweb-edu/sample/10BT --data.max_documents 0 "
    "--data.prepare ahead --data.shard_tokens 5000000 --data.val_fraction 0.01 --output.run_name speedrun-fineweb": (
        "trains on the FineWeb-Edu download above; tests/test_data_ahead.py trains with data.prepare ahead"
    ),
}

# Runs only where the module is installed (the dev extra leaves it out).
NEEDS_MODULE = {
    "WANDB_MODE=offline python train.py --config config.yaml --output.report_to wandb": "wandb",
}


def expected_status(command: str) -> tuple[int, str]:
    """The exit status a command has on this machine, and why when it is not 0."""
    if "configs/gpt2-124m.yaml --dry-run" in command and not cuda_available():
        return 1, "--dry-run plans a CUDA run on a machine without CUDA: the estimate, then 'not here', exit 1"
    return 0, ""


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------- reading the pages

FENCE = re.compile(r"^\s*(```|~~~)\s*(\S*)")
SHELL = {"bash", "sh", "shell", "console"}


def strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a # that starts a word outside quotes, as bash reads it)."""
    quote, prev = None, " "
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev.isspace():
            return line[:i].rstrip()
        prev = ch
    return line.rstrip()


def doc_blocks(page: Path) -> list[list[str]]:
    """The commands of each of a page's shell blocks, in order: continuation lines joined, comments dropped."""
    blocks, lang, pending = [], None, ""
    for line in page.read_text(encoding="utf-8").splitlines():
        fence = FENCE.match(line)
        if fence:
            lang = None if lang is not None else fence.group(2).lower()
            if lang in SHELL:
                blocks.append([])
            continue
        if lang not in SHELL:
            continue
        text = strip_comment(line if not pending else line.strip())
        if text.endswith("\\"):
            pending += text[:-1].rstrip() + " "
            continue
        text, pending = (pending + text).strip(), ""
        if text:
            blocks[-1].append(text)
    return [block for block in blocks if block]


def segments(command: str) -> list[list[str]]:
    """A command's pipeline: each part's words, as bash splits them."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars="|")
    lexer.whitespace_split = True
    parts: list[list[str]] = [[]]
    for word in lexer:
        if word == "|":
            parts.append([])
        else:
            parts[-1].append(word)
    return parts


def program(words: list[str]) -> tuple[str, list[str]]:
    """(the program, its arguments), past VAR=value assignments; .venv/bin/python is python."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    name = Path(words[0]).name if words[0].endswith("/python") else words[0]
    return name, words[1:]


def is_runnable(command: str) -> bool:
    """Every program of the pipeline is one this test runs (`python -m pip` installs: never)."""
    parts = [program(words) for words in segments(command)]
    return all(name in RUNNABLE and args[:2] != ["-m", "pip"] for name, args in parts)


# ------------------------------------------------------------------------------------- THE RULE


def with_values(args: list[str], values: dict[str, str], replace: bool) -> list[str]:
    """args with each --key value set: replaced where given when `replace`, else only appended where absent."""
    args = list(args)
    for key, value in values.items():
        at = [i for i, a in enumerate(args) if a == key or a.startswith(key + "=")]
        if not at:
            args += [key, value]
        elif replace:
            i = at[-1]
            if args[i] == key and i + 1 < len(args) and not args[i + 1].startswith("--"):
                args[i + 1] = value
            else:
                args[i : i + 1] = [key, value]
    return args


def resumed_step(args: list[str], workdir: Path) -> int:
    """The step of the checkpoint a trainer's --resume continues from (auto: output.dir's latest)."""
    from tinyllama.core.config import load_config

    value = args[args.index("--resume") + 1]
    if value == "auto":
        config = args[args.index("--config") + 1]
        out = load_config(workdir / config if (workdir / config).exists() else config).output.dir
        if "--output.dir" in args:
            out = args[args.index("--output.dir") + 1]
        latest = workdir / out / "latest"
        path = latest.parent / latest.read_text().strip()
    else:
        path = workdir / value
    return json.loads((path / "trainer_state.json").read_text())["step"]


def shortened(command: str, workdir: Path) -> str:
    """THE RULE applied: the command line that runs."""
    out = []
    for words in segments(command):
        name, args = program(words)
        head = words[: len(words) - len(args)]
        trains = (name == "python" and args[:1] and args[0] in TRAINERS) or name == "tinyllama-train"
        trains = trains or (name == "mlx.launch" and any(Path(a).name in TRAINERS for a in args))
        if trains and "--help" not in args and "--dry-run" not in args:
            if "--resume" in args:
                args = with_values(args, {"--training.max_steps": str(resumed_step(args, workdir) + 2)}, True)
            else:
                args = with_values(args, {"--training.max_steps": "2"}, True)
                args = with_values(args, SHRINK, False)
        elif (name == "python" and args[:1] == ["infer.py"]) or name == "tinyllama-infer":
            args = with_values(args, INFER, False)
        elif name == "mlx_lm.generate":
            args = with_values(args, MLX_GENERATE, False)
        elif name == "mlx_lm.lora":
            args = with_values(args, MLX_LORA, True)
        out.append(shlex.join(head + args))
    return " | ".join(out)


def is_ours(command: str) -> bool:
    name, args = program(segments(command)[-1])
    if name.startswith("tinyllama-"):
        return True
    if name != "python" or not args:
        return False
    return args[0] in OURS or (args[0] == "-m" and len(args) > 1 and args[1] in OURS)


# ------------------------------------------------------------------------------------- where they run

ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("TINYLLAMA_DEBUG", "PYTHONPATH", "VIRTUAL_ENV")},
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # python, mlx_lm.*, tinyllama-*
    "PYTHONPATH": str(ROOT),  # console commands and `python -m` import this checkout's code
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),  # tiny models: one thread each, ~25% faster here
}
NOT_LINKED = {"checkpoints", "logs", "data_cache", "runs"}  # what a run writes


def clone_view(directory: Path, data_cache: Path) -> Path:
    """A directory that looks like a clone after `make`: the repository's files linked, .venv, data_cache."""
    directory.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in NOT_LINKED:
            (directory / entry.name).symlink_to(entry)
    (directory / ".venv").symlink_to(Path(sys.prefix))
    (directory / "data_cache").symlink_to(data_cache)
    return directory


def run(command: str, workdir: Path, log: Path) -> tuple[int, str, str, float]:
    """Run a command line with bash in `workdir`, stdout and stderr into files (not a terminal): (status, stdout,
    stderr, seconds). A command past TIMEOUT is killed with its whole process group."""
    start = time.monotonic()
    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=workdir, env=ENV, stdin=subprocess.DEVNULL, stdout=o, stderr=e,
            start_new_session=True,
        )  # fmt: skip
        try:
            status = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = -9
    read = lambda p: p.read_bytes().decode("utf-8", "replace")  # noqa: E731
    return status, read(out), read(err), time.monotonic() - start


def lora_data(directory: Path) -> None:
    """mlx_lm.lora's DIR: train.jsonl and valid.jsonl, one {"text": ...} per line (docs/ecosystem.md)."""
    directory.mkdir()
    for name, rows in (("train", 16), ("valid", 4)):
        lines = [json.dumps({"text": f"The history of the place number {i} is long."}) for i in range(rows)]
        (directory / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def notes(directory: Path) -> None:
    directory.mkdir()
    for i in range(3):
        words = " ".join(f"word{j % 89} of note {i} and its history" for j in range(300))
        (directory / f"note-{i}.md").write_text(f"# Note {i}\n\n{words}\n")


def chats(path: Path) -> None:
    talk = [{"role": "user", "content": "What is Alabama?"}, {"role": "assistant", "content": "A state."}]
    path.write_text((json.dumps({"messages": talk}) + "\n") * 40)


def copy_tree(name: str):
    return lambda dest, world: shutil.copytree(world / name, dest)


# path in a block's directory -> (what makes it from the `world` directory, the page, the text a command of the
# block must hold for the block to get it)
STAND_INS = {
    "DIR": (lambda dest, world: lora_data(dest), "docs/ecosystem.md", "--data DIR"),
    "notes": (lambda dest, world: notes(dest), "README.md", "notes/*.md"),
    "more.txt": (lambda dest, world: dest.write_text("A third prompt\nA fourth\n"), "docs/inference.md", "more.txt"),
    "my_chats.jsonl": (lambda dest, world: chats(dest), "docs/finetune.md", "my_chats.jsonl"),
    # a Hugging Face Llama directory where a page names one (the download in finetune.md is skipped)
    "SmolLM2-135M-Instruct": (copy_tree("hf"), "docs/finetune.md", "import SmolLM2-135M-Instruct "),
    "path/to/hf-llama-dir": (copy_tree("hf"), "docs/convert.md", "path/to/hf-llama-dir"),
    "SmolLM2-135M-Instruct.Q4_1.gguf": (
        lambda dest, world: shutil.copy(world / "q4_1.gguf", dest),
        "docs/convert.md",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    # what finetune.md's import writes, for the README's fine-tuning command
    "checkpoints/smollm2-135m-instruct.ckpt": (copy_tree("hf-ckpt"), "README.md", "configs/sft-smollm2.yaml"),
}


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The shared run (`python train.py --config config.yaml` under THE RULE) and the stand-ins made from it."""
    base = tmp_path_factory.mktemp("docs-world")
    cache = base / "data_cache"
    cache.mkdir()
    clone = clone_view(base / "clone", cache)
    command = shortened("python train.py --config config.yaml", clone)
    status, _, err, _ = run(command, clone, base / "world")
    assert status == 0, f"{command}\n{err[-3000:]}"
    from tinyllama.convert.__main__ import main as convert_main

    final = str(clone / "checkpoints" / "final.ckpt")
    convert_main(["export-hf", final, str(base / "hf")])
    convert_main(["import", str(base / "hf"), str(base / "hf-ckpt")])
    convert_main(["export-gguf", final, str(base / "q4_1.gguf"), "--dtype", "q4_1"])
    return base


def block_directory(page: Path, block: list[str], world: Path, directory: Path) -> Path:
    """Where one shell block of `page` runs: a clone view, a copy of the shared run, the block's stand-ins."""
    workdir = clone_view(directory, world / "data_cache")
    for name in ("checkpoints", "logs"):
        shutil.copytree(world / "clone" / name, workdir / name)
    for path, (make, where, mention) in STAND_INS.items():
        if str(page.relative_to(ROOT)) == where and any(mention in command for command in block):
            (workdir / path).parent.mkdir(parents=True, exist_ok=True)
            make(workdir / path, world)
    return workdir


def top_level(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def check(command: str, status: int, out: str, err: str) -> list[str]:
    """What is wrong with a command's run (nothing: [])."""
    want, why = expected_status(command)
    problems = []
    if status != want:
        problems.append(f"exit status {status}, expected {want}" + (f" ({why})" if why else ""))
    if "Traceback (most recent call last)" in err:
        problems.append("a traceback")
    if is_ours(command) and "\r" in out + err:
        problems.append("a progress bar written into redirected output")
    return problems


# ------------------------------------------------------------------------------------- the tests

BLOCKS = {page: doc_blocks(page) for page in PAGES}
FOUND = {c for blocks in BLOCKS.values() for block in blocks for c in block}
RUN_PAGES = [p for p, blocks in BLOCKS.items() if any(c not in SKIP for block in blocks for c in block)]


def test_every_doc_command_is_run_or_skipped():
    """A command of a shell block either runs (its programs are ones this test runs) or is in SKIP with a reason;
    SKIP names only commands the docs still hold."""
    unlisted = sorted(c for c in FOUND if c not in SKIP and not is_runnable(c))
    assert unlisted == [], "doc commands neither run nor listed in SKIP (add them, with the reason)"
    assert sorted(set(SKIP) - FOUND) == [], "SKIP lists commands no doc holds any more"
    assert sorted(set(NEEDS_MODULE) - FOUND) == []
    assert all(reason.strip() for reason in SKIP.values())
    for path, (_, page, mention) in STAND_INS.items():  # each stand-in still serves a block of its page
        assert any(mention in c for block in BLOCKS[ROOT / page] for c in block if c not in SKIP), path
    assert len(FOUND) >= 60 and len(RUN_PAGES) >= 8


def test_the_rule():
    """What THE RULE does to a few commands (the docstring says it in words)."""
    here = ROOT
    assert shortened("python train.py --config config.yaml --model.n_layers 8", here) == (
        "python train.py --config config.yaml --model.n_layers 8 --training.max_steps 2 "
        + " ".join(f"{k} {v}" for k, v in SHRINK.items())
    )
    assert shortened("python train.py --config config.yaml --dry-run", here) == (
        "python train.py --config config.yaml --dry-run"
    )
    assert shortened("echo 'hi there' | python infer.py --ckpt c --chat -p -", here) == (
        "echo 'hi there' | python infer.py --ckpt c --chat -p - --max-new-tokens 4"
    )
    assert shortened("mlx_lm.lora --model m --train --iters 600", here) == (
        "mlx_lm.lora --model m --train --iters 2 --val-batches 1"
    )
    assert strip_comment('python infer.py -p "a # b"   # a comment') == 'python infer.py -p "a # b"'
    assert not is_runnable("python -m pip install x") and not is_runnable("llama-cli -m m.gguf")
    assert is_runnable("echo hi | python infer.py --ckpt c -p -")
    lora = doc_blocks(ROOT / "docs" / "ecosystem.md")[0]
    assert lora[0].startswith("mlx_lm.lora --model checkpoints/final.ckpt") and len(lora) == 3


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUN_PAGES])
def test_doc_commands_run(page, world, tmp_path):
    """Every command of the page that can run here, block by block, each block's commands in order in one fresh
    directory (the module docstring says what it holds and THE RULE)."""
    before = top_level(ROOT), git_status()
    failures, ran = [], []
    here = str(page.relative_to(ROOT))
    for b, block in enumerate(BLOCKS[page]):
        commands = [c for c in block if c not in SKIP and not missing(NEEDS_MODULE.get(c))]
        if all(c in RAN for c in commands):
            ran += [f" ran on {RAN[c]}: {c}" for c in commands]
            continue
        workdir = block_directory(page, block, world, tmp_path / f"block-{b}")
        for i, command in enumerate(commands):
            if command in RAN:  # the same text, run earlier in this session: once is enough
                ran.append(f" ran on {RAN[command]}: {command}")
                continue
            line = shortened(command, workdir)
            status, out, err, seconds = run(line, workdir, tmp_path / f"block-{b}-{i}")
            RAN[command] = here
            ran.append(f"{seconds:5.1f}s  {command}")
            problems = check(command, status, out, err)
            if problems:
                failures.append(f"{command}\n  ran: {line}\n  {'; '.join(problems)}\n  stderr: {err[-1500:]}")
    print(f"\n{page.relative_to(ROOT)}:\n" + "\n".join(ran))
    assert (top_level(ROOT), git_status()) == before, "a doc command wrote into the repository"
    assert not failures, "\n\n".join(failures)


RAN: dict[str, str] = {}  # command -> the page it ran on (a command several pages show runs on the first)


def missing(module: str | None) -> bool:
    import importlib.util

    return module is not None and importlib.util.find_spec(module) is None


def git_status() -> str:
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    return status.stdout
