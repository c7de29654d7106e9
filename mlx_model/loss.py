"""Next-token loss fused with the output projection, a chunk of rows at a time (twin of torch_model/loss.py).

The loss of a chunk is `chunk_loss`, a plain function of its logits; its gradient w.r.t. the logits is
computed in the forward pass, chunk by chunk, and pushed through the projection, so the vjp only scales
it. For plain cross-entropy that gradient is softmax - one_hot from the one `exp` per logit the loss
needs (the plain path, `cross_entropy(h @ W.T, targets)`, exponentiates the logits twice; MLX's CPU `exp`
is slow, and there the one exp is `cpu_exp`); any other loss (a logit transform, an extra term) gets it
from mx.value_and_grad of chunk_loss. Chunks cap the size of each vocabulary-sized array, but MLX's lazy
graph may hold several at once. Lazy evaluation also means an eval-only call never computes the gradients
it returns. Figures: docs/benchmarks.md (bench/loss.py).
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

# exp(x) = 2^k * exp(r), k = round(x / ln 2), |r| <= ln(2) / 2 (Cody-Waite: ln 2 split in two parts so
# k * LN2_HI is exact), exp(r) by its degree-7 Taylor polynomial (truncation < 1e-8 relative).
LOG2E, LN2_HI, LN2_LO = 1.4426950408889634, 0.693145751953125, 1.428606765330187e-06


@mx.compile
def _reduce(x: mx.array, top: mx.array) -> tuple[mx.array, mx.array]:
    """r (fp32) and the bits of the float 2^k for x - top = k ln 2 + r; k >= -126 (2^k stays normal)."""
    x = x - top
    k = mx.round(x * LOG2E)
    r = (x - k * LN2_HI) - k * LN2_LO
    return r, mx.left_shift(mx.maximum(k, -126.0).astype(mx.int32) + 127, 23)


@mx.compile
def _scaled_poly(r: mx.array, two_to_k: mx.array) -> mx.array:
    """exp(r) * 2^k. Estrin's form of the polynomial: MLX fuses at most ~11 dependent operations into one
    CPU kernel, and Horner's 15 would split it in two and keep a third array of the logits' size."""
    r2 = r * r
    low = (1 + r) + r2 * (1 / 2 + r / 6)  # terms 0-3
    high = (1 / 24 + r / 120) + r2 * (1 / 720 + r / 5040)  # terms 4-7, over r^4
    return (low + (r2 * r2) * high) * two_to_k


def cpu_exp(x: mx.array, top: mx.array) -> mx.array:
    """exp(x - top) for finite fp32 x - top <= 88, on MLX's CPU. MLX's own CPU `exp` is a scalar routine there;
    this is two compiled, vectorised kernels (the float 2^k is built from its bits, which MLX cannot fuse
    across), faster (docs/benchmarks.md) and within a few fp32 ulps (tests/test_loss.py). Its cost: two more
    arrays of x's size alive during the step (counted by the --dry-run estimate). Below -87 it returns
    ~1e-38 instead of underflowing, which a softmax sum never sees."""
    r, bits = _reduce(x, top)
    return _scaled_poly(r, mx.view(bits, mx.float32))


# fp32 logits per chunk. On the CPU one big chunk measured fastest (MLX's lazy graph does not free a
# chunk before the next starts, so smaller chunks saved little memory); bounds a large model's logits per
# micro-batch to 1 GiB pieces.
CHUNK_BYTES = 2**30


def _on_cpu() -> bool:
    """The loss takes `cpu_exp` (and its memory) when MLX computes on its CPU; Apple's GPU has a fast exp."""
    return mx.default_device() == mx.cpu


def logit_copies() -> int:
    """fp32 arrays of the logits' size a training step holds at once, for the --dry-run estimate: the logits
    and their gradient, and on the CPU `cpu_exp`'s two (bench/memory.py checks the estimate)."""
    return 4 if _on_cpu() else 2


def chunk_loss(logits: mx.array, targets: mx.array, kept: mx.array, training=None) -> mx.array:
    """The loss of one chunk of rows, summed over the kept ones: a plain function of the chunk's (n, V) logits,
    (n, 1) targets and (n, 1) kept mask. A new loss term is written here, once; autodiff differentiates it
    (`training`: the run's TrainingConfig, for terms only training adds; None for evaluation)."""
    x = logits.astype(mx.float32)  # (n, V)
    log_z = mx.logsumexp(x, axis=-1, keepdims=True)  # (n, 1)
    loss = log_z - mx.take_along_axis(x, targets, axis=-1)  # (n, 1): cross-entropy
    if training is not None and training.z_loss:  # PaLM's z-loss: keeps log Z, the softmax's normaliser, near 0
        loss = loss + training.z_loss * mx.square(log_z)
    return (loss * kept).sum()


def plain_cross_entropy(transform, training) -> bool:
    """Whether chunk_loss is cross-entropy of the raw logits alone, whose gradient the fused path below computes
    from its one exp per logit (softmax - one_hot) instead of autodiff: the common case, and on MLX's CPU the
    fast one."""
    return transform is None and not (training is not None and training.z_loss)


def linear_cross_entropy(
    h: mx.array,
    weight: mx.array,
    targets: mx.array,
    denominator: mx.array | None = None,
    transform=None,
    training=None,
) -> mx.array:
    """Sum of chunk_loss(transform(h @ weight.T), targets) over targets >= 0 (-1: no loss) / denominator
    (default: their count, i.e. the mean), softmax in fp32; h (..., d), weight (V, d). `transform`: what the
    model does to its logits (None: nothing); `training`: chunk_loss's training-only terms."""
    h2d = h.reshape(-1, h.shape[-1])  # (N, d)
    n_chunks = -(-h2d.shape[0] * weight.shape[0] * 4 // CHUNK_BYTES)  # ceil
    rows = -(-h2d.shape[0] // n_chunks)  # equal chunks, no small remainder
    targets = targets.reshape(-1)
    if denominator is None:
        denominator = mx.maximum((targets >= 0).sum(), 1)
    fused = _fused(rows) if plain_cross_entropy(transform, training) else _by_autodiff(rows, transform, training)
    return fused(h2d, weight, targets, mx.array(denominator, mx.float32))[0]


def _with_vjp(forward):
    """`forward(h, weight, targets, denominator)` -> (loss, d loss / d h, d loss / d weight) as a custom function
    whose vjp only scales the gradients the forward pass already made."""
    fused = mx.custom_function(forward)

    @fused.vjp
    def fused_vjp(primals, cotangents, outputs):
        h, weight, targets, denominator = primals
        grad_loss, (_, grad_h, grad_w) = cotangents[0], outputs
        return (
            (grad_loss * grad_h).astype(h.dtype),
            (grad_loss * grad_w).astype(weight.dtype),
            mx.zeros_like(targets),
            mx.zeros_like(denominator),
        )

    return fused


def _over_chunks(h, weight, targets, denominator, rows: int, chunk):
    """(loss, d loss / d h, d loss / d weight) over row chunks of h: (N, d), weight: (V, d); `chunk(logits, t,
    kept)` -> (summed loss, d loss / d logits) for one chunk. Rows whose target is -1 add nothing."""
    row_scale = ((targets >= 0) / denominator)[:, None].astype(h.dtype)  # (N, 1): 0 where no loss
    losses, grad_h, grad_w = [], [], None
    for start in range(0, h.shape[0], rows):
        h_c, t = h[start : start + rows], targets[start : start + rows, None]  # (n, d), (n, 1)
        scale = row_scale[start : start + rows]  # (n, 1)
        loss, grad = chunk(h_c @ weight.T, mx.maximum(t, 0), t >= 0)  # (n, V) logits in the weights' dtype
        losses.append(loss)
        grad = grad.astype(h.dtype)  # (n, V)
        grad_h.append((grad @ weight) * scale)  # (n, d)
        grad_w_c = (grad.T @ (h_c * scale)).astype(mx.float32)  # (V, d)
        grad_w = grad_w_c if grad_w is None else grad_w + grad_w_c
    return mx.stack(losses).sum() / denominator, mx.concatenate(grad_h), grad_w.astype(weight.dtype)


@lru_cache
def _fused(rows: int):
    """Cross-entropy with its gradient from the one exp per logit the loss needs (a Python int of rows, so
    mx.compile sees plain slices)."""

    def chunk(logits, t, kept):
        logits = logits.astype(mx.float32)  # (n, V): fp32 whatever the weights
        top = logits.max(axis=-1, keepdims=True)  # (n, 1)
        exp = cpu_exp(logits, top) if _on_cpu() else mx.exp(logits - top)  # (n, V): the one exp per logit
        total = exp.sum(axis=-1, keepdims=True)  # (n, 1)
        picked = mx.take_along_axis(logits, t, axis=-1)  # (n, 1)
        loss = ((mx.log(total) + top - picked) * kept).sum()
        return loss, exp / total - (mx.arange(logits.shape[1])[None, :] == t)  # softmax - one_hot

    return _with_vjp(lambda h, weight, targets, denominator: _over_chunks(h, weight, targets, denominator, rows, chunk))


def _by_autodiff(rows: int, transform, training):
    """chunk_loss(transform(logits)) with its gradient w.r.t. the logits from mx.value_and_grad, chunk by chunk."""

    def chunk(logits, t, kept):
        loss_of = lambda x: chunk_loss(transform(x) if transform is not None else x, t, kept, training)  # noqa: E731
        return mx.value_and_grad(loss_of)(logits)

    return _with_vjp(lambda h, weight, targets, denominator: _over_chunks(h, weight, targets, denominator, rows, chunk))
