"""A request's text as it streams: token ids to text deltas (core.sampling.TextStream), cut exactly before the
first stop string, holding back text that may be the start of one."""

from __future__ import annotations

from collections.abc import Sequence

from tinyllama.core.sampling import TextStream


class StopText:
    """Feed token ids with `push`; each returns (text safe to send now, whether a stop string was reached).
    Text that ends in the beginning of a stop string is held until the next tokens decide it; `flush` returns
    what is held when generation ends for another reason."""

    def __init__(self, stream: TextStream, stops: Sequence[str] = ()):
        self.stream = stream
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.stopped = False

    def push(self, token: int) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        return self._take(self.stream.push(token))

    def flush(self) -> str:
        if self.stopped:
            return ""
        text, _ = self._take(self.stream.flush())
        if self.stopped:
            return text
        text, self.held = text + self.held, ""
        return text

    def _take(self, delta: str) -> tuple[str, bool]:
        text = self.held + delta
        if not self.stops:
            return text, False
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped, self.held = True, ""
            return text[: min(cuts)], True
        keep = max((_overlap(text, s) for s in self.stops), default=0)  # a stop string may start in the tail
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that begins `stop` (shorter than `stop` itself)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0
