"""Generation and scoring with the MLX model (twin of torch_model/generate.py).

    from mlx_model.generate import generate
    for token in generate(model, prompt_ids, max_new_tokens=50, temperature=0.8, top_p=0.95, seed=0):
        ...

KV cache, the prompt prefilled in one pass, one token per step after that. Greedy decoding stays in
MLX (argmax) and overlaps the next step's graph with the current one (`mx.async_eval`); sampling and
the repetition penalty run on the host in numpy (core/sampling.py), the same code as the torch twin.
No `mx.compile`: plain calls, so any Llama directory works without a warm-up.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence

import mlx.core as mx
import numpy as np

from core.cases import score_layout, split_scores
from core.sampling import SamplingParams, eos_set, fit_prompt, select_token
from mlx_model.model import Model


def last_logits(model: Model, tokens: mx.array, cache: list) -> mx.array:
    """Next-token logits (B, V) of the last position only: the LM head (the largest matmul of a small
    model) runs on one position instead of the whole prompt. Same result as `model(tokens, cache)[:, -1]`."""
    h = model.model(tokens, cache)[:, -1, :]  # (B, d_model)
    return model.model.embed_tokens.as_linear(h) if model.cfg.tie_embeddings else model.lm_head(h)


def _decode_steps(
    model: Model, prompts: np.ndarray, max_new_tokens: int, params: SamplingParams, seed: int | None
) -> Iterator[list[int]]:
    """Rows of equal-length prompts (B, T) -> one list of B next tokens per step (no stopping here)."""
    if max_new_tokens <= 0:
        return
    cache = model.make_cache()
    rngs = [np.random.default_rng(seed) for _ in range(len(prompts))]  # each row as if generated alone
    seen = [dict.fromkeys(int(t) for t in row) for row in prompts]  # insertion-ordered sets

    def step(tokens: mx.array) -> mx.array:
        logits = last_logits(model, tokens, cache)
        return mx.argmax(logits, axis=-1) if params.greedy else logits.astype(mx.float32)

    out = step(mx.array(prompts))
    mx.async_eval(out)
    for i in range(max_new_tokens):
        if params.greedy:
            following = step(out[:, None]) if i + 1 < max_new_tokens else None
            if following is not None:
                mx.async_eval(following)  # queue step i+1 before waiting for step i
            tokens = out.tolist()
        else:
            logits = np.array(out)
            tokens = [select_token(logits[b], params, rngs[b], list(seen[b])) for b in range(len(logits))]
            following = step(mx.array(tokens)[:, None]) if i + 1 < max_new_tokens else None
            if following is not None:
                mx.async_eval(following)
        for b, token in enumerate(tokens):
            seen[b][token] = None
        yield tokens
        out = following


def generate(
    model: Model,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    eos_id: int | Iterable[int] | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time; stops after `max_new_tokens` or before an EOS id (not yielded).
    A prompt too long for the context is trimmed from the left with a warning (see core.sampling.fit_prompt)."""
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    ids, max_new_tokens, note = fit_prompt(prompt_ids, model.cfg.max_seq_len, max_new_tokens)
    if note:
        warnings.warn(note, stacklevel=2)
    stop = eos_set(eos_id)
    for (token,) in _decode_steps(model, np.array([ids]), max_new_tokens, params, seed):
        if token in stop:
            return
        yield token


def generate_batch(
    model: Model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    eos_id: int | Iterable[int] | None = None,
) -> Iterator[tuple[int, list[int]]]:
    """Several prompts: those of equal length run together as one batch (no padding, so no mask is
    needed), groups one after another. Yields (prompt index, new ids) as each group finishes; each result
    equals `list(generate(model, prompts[i], ...))` with the same seed."""
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    stop = eos_set(eos_id)
    groups: dict[tuple[int, int], list[int]] = {}
    fitted = []
    for index, prompt in enumerate(prompts):
        ids, n_new, note = fit_prompt(prompt, model.cfg.max_seq_len, max_new_tokens)
        if note:
            warnings.warn(f"prompt {index}: {note}", stacklevel=2)
        fitted.append(ids)
        groups.setdefault((len(ids), n_new), []).append(index)
    for (_, n_new), members in groups.items():
        outputs: list[list[int]] = [[] for _ in members]
        done = [False] * len(members)
        for tokens in _decode_steps(model, np.array([fitted[i] for i in members]), n_new, params, seed):
            for row, token in enumerate(tokens):
                if not done[row]:
                    done[row] = token in stop
                    if not done[row]:
                        outputs[row].append(token)
            if all(done):
                break
        yield from zip(members, outputs, strict=True)


def score_continuations(
    model: Model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 32
) -> list[tuple[int, list[float]]]:
    """For each (prompt ids, continuation ids): the rank (1 = top) of the continuation's first token among
    the next-token logits after the prompt, and the log-probability of every continuation token given all
    before it (teacher forcing). `batch_size` pairs per right-padded forward pass (core.cases.score_layout)."""
    results = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch, rows, cols, targets = score_layout(chunk, model.cfg.max_seq_len)
        logits = model(mx.array(batch))[mx.array(rows), mx.array(cols)].astype(mx.float32)  # (M, V)
        chosen = mx.take_along_axis(logits, mx.array(targets)[:, None], axis=-1)  # (M, 1)
        logprobs = (chosen[:, 0] - mx.logsumexp(logits, axis=-1)).tolist()
        ranks = (1 + (logits > chosen).sum(axis=-1)).tolist()
        results += split_scores(ranks, logprobs, chunk)
    return results


def mean_loss(model: Model, windows: np.ndarray, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over rows of `windows` (N, L+1): inputs [:, :-1], targets [:, 1:]."""
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = mx.array(windows[start : start + batch_size].astype(np.int64))
        loss = model(chunk[:, :-1], targets=chunk[:, 1:])
        n = chunk.shape[0] * (chunk.shape[1] - 1)
        total += loss.item() * n
        count += n
    return total / count


def peak_memory() -> int | None:
    """Peak bytes MLX allocated in this process (Metal or CPU)."""
    return int(mx.get_peak_memory())
