"""One generation driver for both backends: the decode loop, sampling, stopping, batching, scoring loops.

A backend supplies only the framework calls (see core/backend.py): a `Decoder`, a KV-cache session whose
call runs the model on new tokens and returns, for each row's last position, argmax ids (greedy) or
fp32 logits as a device array that `to_host` copies to numpy; and one-batch loss and scoring functions.
Everything else is here, once: prompt fitting, sampling in numpy with one seeded generator per row
(core/sampling.py), the repetition penalty, EOS, grouping prompts of equal length into one batch. So
MLX and torch give the same tokens for the same seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from tinyllama.core.cases import score_layout, split_scores
from tinyllama.core.sampling import SamplingParams, eos_set, fit_prompt, select_token


class Decoder(Protocol):
    """A KV-cache session of one framework (mlx_model/generate.py, torch_model/generate.py)."""

    def __call__(self, tokens: Any) -> Any:
        """Run (B, T) host tokens, or the previous call's greedy output (B,) still on the device; returns
        the last position's argmax ids (B,) when greedy, else its fp32 logits (B, V), on the device."""

    def to_host(self, out: Any) -> np.ndarray: ...


class RowBatch(Protocol):
    """Rows at different positions decoded together, rows joining and leaving between steps (a server's
    continuous batch, server/engine.py): mlx_model/batch.py and torch_model/batch.py. Rows are 0..rows-1."""

    rows: int  # rows held now
    max_rows: int

    def prefill(self, prompts: np.ndarray) -> Any:
        """Equal-length prompts (k, T) become new rows rows..rows+k-1; returns their next-token fp32 logits
        (k, V) on the device."""

    def step(self, tokens: np.ndarray) -> Any:
        """One new token per row (rows,) -> every row's next-token fp32 logits (rows, V), on the device."""

    def drop(self, row: int) -> None:
        """Forget `row`; the last row takes its place (its index becomes `row`)."""

    def to_host(self, out: Any) -> np.ndarray: ...


NewDecoder = Callable[[bool], Decoder]  # greedy -> a fresh session
GREEDY = SamplingParams()


def decode_steps(
    new_decoder: NewDecoder, prompts: np.ndarray, max_new_tokens: int, params: SamplingParams, seed: int | None
) -> Iterator[list[int]]:
    """Rows of equal-length prompts (B, T) -> one list of B next tokens per step (no stopping here)."""
    if max_new_tokens <= 0:
        return
    decode = new_decoder(params.greedy)
    rngs = [np.random.default_rng(seed) for _ in range(len(prompts))]  # each row as if generated alone
    seen = [dict.fromkeys(int(t) for t in row) for row in prompts]  # insertion-ordered sets
    out = decode(prompts)
    for i in range(max_new_tokens):
        more = i + 1 < max_new_tokens
        if params.greedy:  # ids never leave the device to feed the next step, which is queued before this wait
            following = decode(out) if more else None
            tokens = decode.to_host(out).tolist()
        else:
            logits = decode.to_host(out)
            tokens = [select_token(logits[b], params, rngs[b], list(seen[b])) for b in range(len(logits))]
            following = decode(np.array(tokens)[:, None]) if more else None
        for b, token in enumerate(tokens):
            seen[b][token] = None
        yield tokens
        out = following


def generate(
    new_decoder: NewDecoder,
    max_seq_len: int,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    params: SamplingParams = GREEDY,
    seed: int | None = None,
    eos_id: int | Iterable[int] | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time; stops after `max_new_tokens` or before an EOS id (not yielded).
    A prompt too long for the context is trimmed from the left with a warning (core.sampling.fit_prompt)."""
    ids, max_new_tokens, note = fit_prompt(prompt_ids, max_seq_len, max_new_tokens)
    if note:
        warnings.warn(note, stacklevel=3)
    stop = eos_set(eos_id)
    for (token,) in decode_steps(new_decoder, np.array([ids]), max_new_tokens, params, seed):
        if token in stop:
            return
        yield token


def generate_batch(
    new_decoder: NewDecoder,
    max_seq_len: int,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    params: SamplingParams = GREEDY,
    seed: int | None = None,
    eos_id: int | Iterable[int] | None = None,
) -> Iterator[tuple[int, list[int]]]:
    """Several prompts: those of equal length run together as one batch (no padding, so no mask is
    needed), groups one after another. Yields (prompt index, new ids) as each group finishes; each result
    equals `generate(..., prompts[i], ...)` with the same seed."""
    stop = eos_set(eos_id)
    groups: dict[tuple[int, int], list[int]] = {}
    fitted = []
    for index, prompt in enumerate(prompts):
        ids, n_new, note = fit_prompt(prompt, max_seq_len, max_new_tokens)
        if note:
            warnings.warn(f"prompt {index}: {note}", stacklevel=3)
        fitted.append(ids)
        groups.setdefault((len(ids), n_new), []).append(index)
    for (_, n_new), members in groups.items():
        outputs: list[list[int]] = [[] for _ in members]
        done = [False] * len(members)
        for tokens in decode_steps(new_decoder, np.array([fitted[i] for i in members]), n_new, params, seed):
            for row, token in enumerate(tokens):
                if not done[row]:
                    done[row] = token in stop
                    if not done[row]:
                        outputs[row].append(token)
            if all(done):
                break
        yield from zip(members, outputs, strict=True)


ScoreBatch = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[list[int], list[float]]]


def score(
    score_batch: ScoreBatch,
    max_seq_len: int,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 32,
) -> list[tuple[int, list[float]]]:
    """For each (prompt ids, continuation ids): the rank (1 = top) of the continuation's first token among
    the next-token logits after the prompt, and the log-probability of every continuation token given all
    before it (teacher forcing). `batch_size` pairs per right-padded forward pass (core.cases.score_layout);
    `score_batch(tokens, rows, cols, targets)` returns the ranks and log-probs at those positions."""
    results = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        ranks, logprobs = score_batch(*score_layout(chunk, max_seq_len))
        results += split_scores(ranks, logprobs, chunk)
    return results


def mean_loss(batch_loss: Callable[..., float], windows: Any, batch_size: int) -> float:
    """Validation loss: mean next-token cross-entropy over every target token of `windows`, in batches of
    `batch_size` rows. `windows` is (N, L+1) token rows (data.loader.val_windows), or packed conversations
    (data.loader.Rows: x, y with -1 where no loss is taken, segments); `batch_loss(x, y[, segments])` is one
    batch's mean over its targets. The trainers' eval and evaluate_checkpoints.py both use this, so they
    report the same number."""
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        arrays = (chunk[:, :-1], chunk[:, 1:]) if isinstance(chunk, np.ndarray) else (chunk.x, chunk.y, chunk.segments)
        n = int((arrays[1] >= 0).sum())
        if n:
            total += batch_loss(*arrays) * n
            count += n
    return total / count if count else float("nan")


def target_bytes(windows: Any, token_bytes: np.ndarray) -> tuple[int, int]:
    """(targets, bytes) of `windows` as mean_loss reads them: how many target tokens its mean is over (y >= 0),
    and the UTF-8 bytes those targets decode to (`token_bytes[id]`, data.token_bytes): bits per byte's
    denominator. Packed conversations count only the targets the loss learns."""
    y = windows[:, 1:] if isinstance(windows, np.ndarray) else windows.y
    learnt = np.asarray(y)[np.asarray(y) >= 0]
    return int(learnt.size), int(token_bytes[learnt].sum())
