"""Generation and scoring with the PyTorch model (twin of mlx_model/generate.py).

    from torch_model.generate import generate
    for token in generate(model, prompt_ids, max_new_tokens=50, temperature=0.8, top_p=0.95, seed=0):
        ...

KV cache, the prompt prefilled in one pass, one token per step after that, under
`torch.inference_mode`. Greedy decoding stays on the device (argmax); sampling and the repetition
penalty run on the host in numpy (core/sampling.py), the same code as the MLX twin.
"""

from __future__ import annotations

import resource
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.cases import score_layout, split_scores
from core.sampling import SamplingParams, eos_set, fit_prompt, select_token
from torch_model.model import Model
from torch_model.state import unwrap


def _device(model: Model) -> torch.device:
    return next(model.parameters()).device


def last_logits(model: Model, tokens: torch.Tensor, cache: list) -> torch.Tensor:
    """Next-token logits (B, V) of the last position only: the LM head (the largest matmul of a small
    model) runs on one position instead of the whole prompt. Same result as `model(tokens, cache)[:, -1]`."""
    h = model.model(tokens, cache)[:, -1, :]  # (B, d_model)
    return F.linear(h, model.model.embed_tokens.weight) if model.cfg.tie_embeddings else model.lm_head(h)


@torch.inference_mode()
def _decode_steps(
    model: Model, prompts: np.ndarray, max_new_tokens: int, params: SamplingParams, seed: int | None
) -> Iterator[list[int]]:
    """Rows of equal-length prompts (B, T) -> one list of B next tokens per step (no stopping here)."""
    if max_new_tokens <= 0:
        return
    cache = model.make_cache()
    device = _device(model)
    rngs = [np.random.default_rng(seed) for _ in range(len(prompts))]  # each row as if generated alone
    seen = [dict.fromkeys(int(t) for t in row) for row in prompts]  # insertion-ordered sets

    def step(tokens: torch.Tensor) -> torch.Tensor:
        logits = last_logits(model, tokens, cache)
        return logits.argmax(dim=-1) if params.greedy else logits.float()

    out = step(torch.as_tensor(prompts, dtype=torch.long, device=device))
    for i in range(max_new_tokens):
        if params.greedy:
            following = step(out[:, None]) if i + 1 < max_new_tokens else None  # queued before the sync (CUDA)
            tokens = out.tolist()
        else:
            logits = out.cpu().numpy()
            tokens = [select_token(logits[b], params, rngs[b], list(seen[b])) for b in range(len(logits))]
            following = step(torch.tensor(tokens, device=device)[:, None]) if i + 1 < max_new_tokens else None
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
    model = unwrap(model)  # the plain Model inside torch.compile / DDP / FSDP (e.g. the trainers' sample step)
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
    model = unwrap(model)
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


@torch.inference_mode()
def score_continuations(
    model: Model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 32
) -> list[tuple[int, list[float]]]:
    """For each (prompt ids, continuation ids): the rank (1 = top) of the continuation's first token among
    the next-token logits after the prompt, and the log-probability of every continuation token given all
    before it (teacher forcing). `batch_size` pairs per right-padded forward pass (core.cases.score_layout)."""
    model = unwrap(model)
    device = _device(model)
    results = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        layout = score_layout(chunk, model.cfg.max_seq_len)
        batch, rows, cols, targets = (torch.as_tensor(a, device=device) for a in layout)
        logits = model(batch)[rows, cols].float()  # (M, V)
        chosen = logits.gather(-1, targets[:, None])  # (M, 1)
        logprobs = (chosen[:, 0] - logits.logsumexp(dim=-1)).tolist()
        ranks = (1 + (logits > chosen).sum(dim=-1)).tolist()
        results += split_scores(ranks, logprobs, chunk)
    return results


@torch.inference_mode()
def mean_loss(model: Model, windows: np.ndarray, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over rows of `windows` (N, L+1): inputs [:, :-1], targets [:, 1:]."""
    model = unwrap(model)
    device = _device(model)
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = torch.as_tensor(windows[start : start + batch_size].astype(np.int64), device=device)
        loss = model(chunk[:, :-1], targets=chunk[:, 1:])
        n = chunk.shape[0] * (chunk.shape[1] - 1)
        total += loss.item() * n
        count += n
    return total / count


def peak_memory() -> int | None:
    """Peak bytes: CUDA's allocator on a GPU, else this process's peak resident set (CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
