"""What every command-line script shares: one-line errors with exit code 2, human units."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class UserError(ValueError):
    """Bad input from the user: printed as one line naming the problem and the fix, exit code 2."""


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_cli(main: Callable[[], object]) -> None:
    """Call `main`; a UserError (config, checkpoint, data, ...) becomes one line on stderr and exit 2."""
    try:
        main()
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


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


def human_duration(seconds: float) -> str:
    """250 -> '4m10s', 5000 -> '1h23m'."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
