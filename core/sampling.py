"""Framework-free generation helpers: next-token selection on numpy logits, prompt fitting, text streaming.

Both backends' `generate` functions pick greedy tokens inside their framework (argmax, no host copy)
and hand the last position's logits to `select_token` only when sampling or a repetition penalty is
asked for. Sampling therefore runs the same numpy code with the same `np.random.Generator` on MLX and
torch: one seed gives the same tokens on both backends (up to float noise in the logits).

Order of operations (the Hugging Face order): repetition penalty -> temperature -> top-k -> top-p ->
draw. Temperature 0 means greedy (argmax after the penalty).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token; construction refuses what sampling cannot use (a ValueError naming it)."""

    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no nucleus cut
    repetition_penalty: float = 1.0  # 1: none; > 1 discourages tokens already in the prompt or output
    min_p: float = 0.0  # 0: off; else drop tokens less likely than min_p x the most likely one

    def __post_init__(self):
        for name in ("temperature", "top_p", "repetition_penalty", "min_p"):  # NaN passes every comparison below
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1) (0 = off), got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        """Plain argmax: the backends then never copy logits to the host."""
        return self.temperature == 0 and self.repetition_penalty == 1.0


def sampling_params(values: Mapping[str, Any]) -> SamplingParams:
    """SamplingParams from raw values: command-line numbers, a request's JSON, a query string's text. Each must
    be a known name with a number (top_k a whole one; text that reads as one is taken) that is finite and in
    range; else a ValueError naming it. The one parser infer.py and a server share."""
    kinds = {f.name: int if f.type in (int, "int") else float for f in fields(SamplingParams)}
    parsed: dict[str, Any] = {}
    for name, value in values.items():
        if name not in kinds:
            raise ValueError(f"unknown sampling parameter '{name}'; known: {', '.join(kinds)}")
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(number):
            raise ValueError(f"{name} must be a finite number, got {value}")
        if kinds[name] is int:
            if number != int(number):
                raise ValueError(f"{name} must be a whole number, got {value}")
            number = int(number)
        parsed[name] = float(number) if kinds[name] is float else number
    return SamplingParams(**parsed)


def apply_repetition_penalty(logits: np.ndarray, seen: Sequence[int] | np.ndarray, penalty: float) -> np.ndarray:
    """CTRL (Keskar et al. 2019) as in Hugging Face: a seen token's logit is divided by `penalty`
    when positive and multiplied by it when negative (each seen token once). Returns a new array."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0 or len(seen) == 0:
        return out
    ids = np.unique(np.asarray(seen, dtype=np.int64))
    values = out[..., ids]
    with np.errstate(over="ignore", divide="ignore"):  # a tiny or huge penalty: +-inf, select_token's limit
        out[..., ids] = np.where(values > 0, values / penalty, values * penalty)
    return out


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits (ties at the k-th value kept), the rest -inf. k=0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches `p` (at least one;
    ties at the cut kept). Sorts values, not indices: far cheaper than a stable argsort over the vocabulary."""
    if p >= 1.0:
        return logits
    probs = _softmax(logits)
    ranked = np.sort(probs)[::-1]
    keep = min(int(np.searchsorted(np.cumsum(ranked), p)) + 1, len(ranked))  # first rank reaching p, inclusive
    return np.where(probs >= ranked[keep - 1], logits, -np.inf)


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Min-p (Nguyen et al. 2024): keep tokens whose probability is at least `min_p` times the top one's."""
    if min_p <= 0:
        return logits
    cut = logits.max() + np.log(np.float32(min_p))  # p_i >= min_p * p_max  <=>  logit_i >= max + log(min_p)
    return np.where(logits >= cut, logits, -np.inf)


def _limits(logits: np.ndarray) -> np.ndarray:
    """Logits a vanishing penalty or temperature pushed to +inf: those tokens alone, tied (the limit of the
    softmax); `inf - inf` would otherwise make every probability NaN."""
    top = np.isposinf(logits)
    return np.where(top, np.float32(0), np.float32(-np.inf)) if top.any() else logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def select_token(
    logits: np.ndarray, params: SamplingParams, rng: np.random.Generator | None, seen: Sequence[int] = ()
) -> int:
    """One next token from one position's logits (V,): penalty, then argmax or a seeded draw."""
    logits = _limits(apply_repetition_penalty(logits, seen, params.repetition_penalty))
    if params.temperature == 0:
        return int(np.argmax(logits))
    t32 = np.float32(params.temperature)
    with np.errstate(over="ignore"):  # a tiny temperature sends every gap to the top token to -inf
        shifted = logits - logits.max()  # <= 0: the top token at 0, whatever the temperature
        scaled = shifted / t32 if t32 > 0 else (shifted.astype(np.float64) / params.temperature).astype(np.float32)
    logits = top_k_filter(scaled, params.top_k)
    logits = min_p_filter(top_p_filter(logits, params.top_p), params.min_p)
    filtered = params.top_k > 0 or params.top_p < 1.0 or params.min_p > 0
    candidates = np.flatnonzero(logits > -np.inf) if filtered else None  # draw among the kept tokens only
    kept = logits[candidates] if filtered else logits
    weights = np.cumsum(np.exp(kept - kept.max()))
    rng = rng if rng is not None else np.random.default_rng()
    index = min(int(np.searchsorted(weights, rng.random() * weights[-1], side="right")), len(kept) - 1)
    return int(candidates[index]) if filtered else index


def eos_set(eos_id: int | Iterable[int] | None) -> frozenset[int]:
    """`eos_id` as a set: configs hold one id, a list of ids, or none."""
    if eos_id is None:
        return frozenset()
    if isinstance(eos_id, int | np.integer):
        return frozenset({int(eos_id)})
    return frozenset(int(i) for i in eos_id)


def fit_prompt(prompt_ids: Sequence[int], max_seq_len: int, max_new_tokens: int) -> tuple[list[int], int, str | None]:
    """Make prompt + new tokens fit the context: at most `max_seq_len - 1` new tokens, and a prompt of at
    most `max_seq_len - max_new_tokens` tokens, trimmed from the left. Returns (ids, max_new, warning)."""
    if not prompt_ids:
        raise ValueError("empty prompt: generation needs at least one token (e.g. the BOS id)")
    notes = []
    if max_new_tokens > max_seq_len - 1:
        notes.append(f"max_new_tokens {max_new_tokens} capped to {max_seq_len - 1} (max_seq_len {max_seq_len})")
        max_new_tokens = max_seq_len - 1
    room = max_seq_len - max_new_tokens
    ids = list(prompt_ids)
    if len(ids) > room:
        notes.append(
            f"prompt has {len(ids)} tokens; keeping the last {room} "
            f"(max_seq_len {max_seq_len} - max_new_tokens {max_new_tokens})"
        )
        ids = ids[-room:]
    return ids, max_new_tokens, "; ".join(notes) or None


class TextStream:
    """Turns a stream of token ids into text deltas that are safe to print as they come.

    Decodes the tokens since the last flush point together (so tokenizers that join words with spaces or
    drop a leading space decode right), holds text back while it ends in an incomplete UTF-8 character
    (U+FFFD), and starts from the prompt's last token so the first word gets its separator."""

    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: Sequence[int] = ()):
        self.decode = decode
        self.tokens: list[int] = list(prompt_ids[-1:])
        self.printed = len(decode(self.tokens)) if self.tokens else 0

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self.decode(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        delta = text[self.printed :]
        if text.endswith("\n") and len(self.tokens) > 1:
            self.tokens, self.printed = [token], len(self.decode([token]))
        else:
            self.printed = len(text)
        return delta

    def flush(self) -> str:
        text = self.decode(self.tokens)
        delta = text[self.printed :]
        self.printed = len(text)
        return delta
