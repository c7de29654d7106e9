"""The one exception type of the data pipeline."""

from __future__ import annotations

from core.cli import UserError


class DataError(UserError):
    """A data problem phrased as one line that names the input and the fix; CLIs print it and exit 2."""
