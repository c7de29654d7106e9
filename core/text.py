"""Text a user hands a command (a file, standard input, an argument), decoded as UTF-8 or refused in one line.

A file's bytes are decoded strictly, so a binary or Latin-1 file is named with the offset of its first bad
byte. Standard input and sys.argv are decoded by Python itself, with errors='surrogateescape' under a C or
POSIX locale (and always for argv): undecodable bytes arrive as lone surrogates, which tokenizers reject with
a TypeError far from where they came in. `checked` finds them where the text is read.
"""

from __future__ import annotations

import re
from pathlib import Path

from tinyllama.core.cli import UserError

SURROGATE = re.compile("[\ud800-\udfff]")


def decode(data: bytes, where: str, error: type[UserError] = UserError) -> str:
    """UTF-8 text (a leading byte-order mark dropped), or `error` naming `where` and the first bad byte."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise error(
            f"{where} is not UTF-8 text (byte offset {exc.start}: 0x{data[exc.start]:02x}); convert it to UTF-8"
        ) from None


def read_text(path: str | Path, what: str) -> str:
    """The file at `path` as text; `what` names it in the one-line errors ('case file', 'prompt file')."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return decode(data, f"{what} {path}")


def checked(text: str, where: str) -> str:
    """`text` as read from a stream or the command line, or a UserError naming `where` when it holds bytes that
    were not UTF-8 (lone surrogates: see the module docstring)."""
    bad = SURROGATE.search(text)
    if bad is not None:
        offset = len(text[: bad.start()].encode("utf-8", "surrogateescape"))
        raise UserError(f"{where} is not UTF-8 text (byte offset {offset}); convert it to UTF-8")
    return text
