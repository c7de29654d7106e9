"""What every command-line script shares: one-line errors with exit code 2, human units.

Bad input of any kind (a config key, a path, a damaged checkpoint, a full disk, a mistyped flag) ends a
command with one `error:` line that names the problem and the fix, exit code 2, no traceback.
`--debug` (or TINYLLAMA_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class UserError(ValueError):
    """Bad input from the user: printed as one line naming the problem and the fix, exit code 2."""


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line plus where to look (`--help`), not the whole usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # `--resum auto` must be an error, not --resume
        command = os.path.basename(sys.argv[0])
        if command.startswith("tinyllama-"):  # an installed console command names itself in usage and errors
            kwargs["prog"] = command
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def module_prog(module: str) -> str:
    """`python -m <module>` as the user typed it: `convert` in a clone, `tinyllama.convert` anywhere."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name.removesuffix(".__main__") if spec is not None else module
    return f"python -m {name if name.removeprefix('tinyllama.') == module else module}"


def debugging() -> bool:
    return "--debug" in sys.argv or os.environ.get("TINYLLAMA_DEBUG", "").strip() not in ("", "0")


def exit_on_interrupt() -> None:
    """Ctrl-C before a command's main work (during its imports, say) ends it with one line, exit 130.
    Scripts call this first when run as scripts; the trainers' own Ctrl-C handling replaces it while
    they train (save, then exit 0). The process ends at once (`os._exit`): an exception raised from a
    signal handler can land inside any library's import and come out as a different error with a
    traceback; whatever was being written then is left as debris that the next start clears."""

    def handler(signum, frame):
        print("interrupted", file=sys.stderr, flush=True)
        os._exit(130)

    signal.signal(signal.SIGINT, handler)


def exit_without_teardown() -> NoReturn:
    """End a finished inference-side command (infer, evaluate, convert) at once, exit 0: the interpreter's
    teardown of torch's modules takes a noticeable share of start-to-prompt time (docs/benchmarks.md) and
    frees nothing the OS does not. atexit handlers (a converted .gguf's
    temporary directory) run and the output streams are flushed first. Not for the trainers: a process
    group or a writer thread must close properly."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more to say
            pass
    os._exit(0)


def os_error_message(exc: OSError) -> str:
    """One line for a failed file operation: what, where, and the usual fix."""
    where = f" {exc.filename}" if exc.filename else ""
    reason = exc.strerror or str(exc)
    fix = {
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EDQUOT: "free some space or write elsewhere",
        errno.EACCES: "check its permissions or write elsewhere",
        errno.EPERM: "check its permissions or write elsewhere",
        errno.EROFS: "the file system is read-only: write elsewhere",
        errno.ENOTDIR: "a file stands where a directory is expected: move it or choose another path",
        errno.EISDIR: "a directory stands where a file is expected: choose another path",
    }.get(exc.errno, "check the path")
    return f"cannot use{where}: {reason}; {fix}"


def progress(iterable: Any = None, shown: bool = True, **kwargs: Any) -> Any:
    """A tqdm progress bar on stderr, drawn only when stderr is a terminal (and `shown`): redirected into a file or
    a pipe (CI, `2> log`, `| tee`) a bar is a stream of carriage-return redraws, so there it writes nothing and
    the command's own lines are the progress. Every bar of this project is made here: the decision is ours, not
    tqdm's `disable=None`, which looks at whatever `file` the bar was given and has not meant the same in every
    tqdm release."""
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, disable=not (shown and sys.stderr.isatty()), **kwargs)


def quiet_other_progress_bars() -> None:
    """Other libraries' bars (huggingface_hub's downloads, datasets' loading) follow the same rule as ours: none
    when stderr is not a terminal. Their switches are environment variables read at import (an explicit setting
    wins), and a function for a hub already imported."""
    if sys.stderr.isatty():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        hub.disable_progress_bars()


def run_cli(main: Callable[[], object]) -> None:
    """Call `main`; a UserError (config, checkpoint, data, ...) or a failed file operation becomes one line
    on stderr and exit 2 (with --debug / TINYLLAMA_DEBUG=1: the traceback). Progress bars are drawn only on a
    terminal (`progress`, `quiet_other_progress_bars`)."""
    debug = debugging()
    quiet_other_progress_bars()
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        main()
    except UserError as exc:
        if debug:
            raise
        fail(str(exc))
    except BrokenPipeError:  # the reader stopped reading (`infer.py ... | head`): stop quietly, as `cat` does
        sys.stderr.flush()
        os._exit(141)  # the shell's status for a command ended by SIGPIPE; no flush of the closed pipe
    except OSError as exc:
        if debug:
            raise
        fail(os_error_message(exc))
    except MemoryError:
        if debug:
            raise
        fail("out of memory; use a smaller model, batch or sequence (see --dry-run)")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def install_extra(extra: str) -> str:
    """The command that installs one of this package's extras (pyproject.toml's optional-dependencies), spelled
    as docs/install.md spells it: an editable install of the clone, run from its root."""
    return f'pip install -e ".[{extra}]"'


def human_count(n: float) -> str:
    """41300 -> '41.3k', 1.2e6 -> '1.2M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"


def human_bytes(n: float) -> str:
    """1.2e9 -> '1.2 GB' (decimal units, as macOS and most tools show)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def human_flops(n: float) -> str:
    """1.5e11 -> '150 GFLOP/s', 3.1e14 -> '310.0 TFLOP/s'."""
    return f"{n / 1e12:.1f} TFLOP/s" if n >= 1e12 else f"{n / 1e9:.0f} GFLOP/s"


def human_duration(seconds: float) -> str:
    """250 -> '4m10s', 5000 -> '1h23m'."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
