"""The fuzz tier: hypothesis generates config overrides, case files, chat rows, chat templates and command-line
argument lists, and every run must end with exit 0 or exit 2 and exactly one `error:` line: never a traceback,
never a hang (each run under a deadline), nothing outside its own working directory touched.

Seeded: `make test` runs a fixed set of examples (derandomized, the "suite" profile); `make fuzz` runs the
"deep" profile, many more examples from `--hypothesis-seed` (FUZZ_SEED, 0 unless set), so a failure found
there is found again with the same seed. What the tier found when it was written: docs/testing.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import string
import sys
from pathlib import Path

import pytest
from helpers import ROOT, file_hashes, smoke_argv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyllama import evaluate_checkpoints, infer, train_cuda
from tinyllama.core.cli import UserError, run_cli
from tinyllama.core.config import SECTIONS
from tinyllama.data.chat import ChatTemplate, render
from tinyllama.data.prepare import main as prepare_main

DEEP = os.environ.get("TINYLLAMA_FUZZ") == "deep"
settings.register_profile(
    "suite", max_examples=12, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "deep", max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True
)
PROFILE = settings.get_profile("deep" if DEEP else "suite")
DEADLINE_S = 60  # one command on the smoke model; a hang is anything longer

pytestmark = pytest.mark.slow  # trains the checkpoint it fuzzes against, and runs hundreds of commands


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so no `except Exception` in the code under test swallows it."""


@contextlib.contextmanager
def deadline(seconds: int):
    def ring(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(main, argv: list[str], cwd: Path, stdin: str = "") -> tuple[int, str, str]:
    """A command's main as the script runs it (run_cli), in `cwd`: (exit code, stdout, stderr). Any exception
    that escapes run_cli (a traceback for the user) fails the example."""
    out, err = io.StringIO(), io.StringIO()
    here = Path.cwd()
    os.chdir(cwd)
    saved_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), deadline(DEADLINE_S):
            try:
                run_cli(lambda: main(argv))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = saved_stdin
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def assert_clean_end(code: int, out: str, err: str, ok: tuple[int, ...] = (0, 2)) -> None:
    """Exit 0, or exit 2 with exactly one `error:` line; never a traceback."""
    assert "Traceback" not in err, err[-3000:]
    assert code in ok, (code, err[-2000:])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 2:
        assert len(errors) == 1, err[-2000:]
    else:
        assert not errors, err[-2000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache) -> Path:
    """A 2-step smoke checkpoint every target runs against (never written to by the examples)."""
    run_dir = tmp_path_factory.mktemp("fuzz-run")
    train_cuda.main(smoke_argv(run_dir, data_cache, "--training.max_steps", "2", "--training.eval_every", "0",
                               "--hardware.accelerator", "cpu"))  # fmt: skip
    return run_dir / "ckpt" / "final.ckpt"


@pytest.fixture(scope="module", autouse=True)
def nothing_outside_is_touched(trained):
    """The repository and the shared checkpoint are as they were after every example of the module."""
    repo = {p: p.stat().st_mtime_ns for p in ROOT.rglob("*") if p.is_file() and not _ignored(p)}
    checkpoint = file_hashes(trained)
    yield
    assert {p: p.stat().st_mtime_ns for p in repo if p.exists()} == repo
    assert file_hashes(trained) == checkpoint


def _ignored(path: Path) -> bool:
    parts = path.relative_to(ROOT).parts
    return bool(set(parts) & {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"})


# ------------------------------------------------------------------------------------------ strategies

KEYS = sorted(f"{section}.{name}" for section, cls in SECTIONS.items() for name in cls.__dataclass_fields__)
NASTY_TEXT = st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "-1", "0", "1e9", "true", "none", "null",
                              "../x", "/", "~", "é", "\u202e", "\x00", "a" * 300, "3,4", "[1]", "{a: 1}"])  # fmt: skip
VALUES = st.one_of(
    NASTY_TEXT,
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(string.printable, max_size=20),
    st.text(max_size=12),
)
OVERRIDES = st.lists(
    st.tuples(st.one_of(st.sampled_from(KEYS), st.sampled_from(["model.n_head", "trainig.lr", "x.y", "model."])),
              VALUES),
    min_size=1, max_size=4,
)  # fmt: skip


@settings(PROFILE)
@given(overrides=OVERRIDES)
def test_config_overrides(overrides, tmp_path_factory, data_cache):
    """Any override list on top of the smoke config, planned with --dry-run: a plan (exit 0), a plan that
    does not fit this machine (exit 1, said so), or one line naming the key."""
    work = tmp_path_factory.mktemp("cfg")
    argv = [*smoke_argv(work, data_cache, "--hardware.accelerator", "cpu"), "--dry-run"]
    for key, value in overrides:
        argv += [f"--{key}", value]
    code, out, err = run(train_cuda.main, argv, work)
    assert_clean_end(code, out, err, ok=(0, 1, 2))
    if code == 1:
        assert "does not fit" in out, out[-2000:]


CASE_FIELDS = st.sampled_from(["prompt", "expect", "name", "expct", "prompts", "", "k"])
CASE_VALUES = st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.none(), st.lists(st.text(max_size=5)),
                        st.booleans())  # fmt: skip
CASE_FILES = st.one_of(
    st.lists(st.dictionaries(CASE_FIELDS, CASE_VALUES, max_size=4), max_size=4).map(json.dumps),  # YAML is JSON too
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@settings(PROFILE)
@given(cases=CASE_FILES, top_k=st.integers(-3, 10))
def test_case_files(cases, top_k, trained, tmp_path_factory):
    work = tmp_path_factory.mktemp("cases")
    (work / "cases.yaml").write_bytes(cases.encode("utf-8", "surrogateescape"))
    argv = ["--checkpoints", str(trained), "--cases", "cases.yaml", "--top-k", str(top_k), "--backend", "torch",
            "--out", "out.json"]  # fmt: skip
    assert_clean_end(*run(evaluate_checkpoints.main, argv, work))


ROLES = st.sampled_from(["user", "assistant", "system", "tool", "", "USER", 3])
CONTENT = st.one_of(st.text(max_size=40), st.integers(), st.none(), st.lists(st.text(max_size=4), max_size=2))
MESSAGE = st.dictionaries(st.sampled_from(["role", "content", "name", "rolle"]), st.one_of(ROLES, CONTENT),
                          max_size=3)  # fmt: skip
ROW = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=4)}),
    st.fixed_dictionaries({"prompt": CONTENT, "completion": CONTENT}),
    st.dictionaries(st.sampled_from(["messages", "text", "prompt"]), CONTENT, max_size=2),
)


@settings(PROFILE)
@given(rows=st.lists(ROW, min_size=1, max_size=6), chat_format=st.sampled_from(["auto", "chat", "completions"]))
def test_chat_rows(rows, chat_format, trained, tmp_path_factory):
    """Conversation rows of any shape through data preparation, with the checkpoint's tokenizer."""
    work = tmp_path_factory.mktemp("rows")
    (work / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--config", str(ROOT / "configs/smoke.yaml"), "--data.dataset", "rows.jsonl", "--data.tokenizer",
            str(trained), "--data.format", chat_format, "--data.cache_dir", "cache"]  # fmt: skip

    def prepare(args):
        code = prepare_main(args)
        if code:
            raise SystemExit(code)

    assert_clean_end(*run(prepare, argv, work))


PIECES = st.sampled_from([
    "{{ messages[0]['content'] }}", "{% for m in messages %}{{ m.content }}{% endfor %}", "{{ 1/0 }}",
    "{% for a in range(10**7) %}{% for b in range(10**7) %}x{% endfor %}{% endfor %}", "{{ 'x' * 10**9 }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "{% include 'x' %}", "{% import 'y' as z %}",
    "{{ messages|length }}", "{{ raise_exception('no') }}", "{% if add_generation_prompt %}A:{% endif %}",
    "{{ eos_token }}", "{{ x.y.z }}", "{{ ''.__class__ }}", "{% set s = namespace(a=1) %}{{ s.a }}",
    "{{ (9**9**9) }}", "{{ messages * 10**8 }}", "{%", "}}", "{{", "{# c #}", "{% for %}", "{{ range(10**10)|list }}",
    "{{ '%s' % messages }}", "{{ 'a'.center(10**9) }}", "{{ [1]*10**9 }}", "{{ messages|tojson }}",
])  # fmt: skip


class _Tokenizer:
    eos_token, bos_token, unk_token = "<eos>", "<bos>", "<unk>"


@settings(PROFILE)
@given(pieces=st.lists(st.one_of(PIECES, st.text(max_size=8)), min_size=1, max_size=4),
       messages=st.lists(MESSAGE, max_size=3))  # fmt: skip
def test_templates(pieces, messages):
    """Any template text renders to text or fails as one UserError line naming the template; in bounded time."""
    template = ChatTemplate("".join(pieces), "data.chat_template fuzz.jinja")
    with deadline(DEADLINE_S):
        try:
            text = render(template, messages, _Tokenizer(), add_generation_prompt=True)
        except UserError as exc:
            message = str(exc)
            assert "\n" not in message.strip() and "fuzz.jinja" in message, message
            return
    assert isinstance(text, str)


INFER_FLAGS = {
    "--prompt": st.text(max_size=30), "--max-new-tokens": st.integers(-2, 12).map(str),
    "--temperature": VALUES, "--top-k": VALUES, "--top-p": VALUES, "--min-p": VALUES,
    "--repetition-penalty": VALUES, "--seed": VALUES, "--dtype": st.sampled_from(["fp32", "bf16", "f16", "q4", ""]),
    "--backend": st.sampled_from(["torch", "mlx", "cuda", "x"]), "--system-prompt": st.text(max_size=10),
    "--tokenizer": st.sampled_from(["gpt2", "nope", ""]), "--prompt-file": st.sampled_from(["nothing.txt", "."]),
}  # fmt: skip
INFER_ARGS = st.lists(
    st.one_of(st.sampled_from(sorted(INFER_FLAGS)).flatmap(lambda f: st.tuples(st.just(f), INFER_FLAGS[f])),
              st.tuples(st.sampled_from(["--chat", "--bogus", "-p"]), st.just(None))),
    max_size=5,
)  # fmt: skip


@settings(PROFILE)
@given(args=INFER_ARGS, stdin=st.text(max_size=40))
def test_infer_arguments(args, stdin, trained, tmp_path_factory):
    work = tmp_path_factory.mktemp("infer")
    argv = ["--ckpt", str(trained), "--max-new-tokens", "4", "--backend", "torch"]
    for flag, value in args:
        argv += [flag] if value is None else [flag, value]
    assert_clean_end(*run(infer.main, argv, work, stdin=stdin))
