"""Next-token loss fused with the output projection, a chunk of rows at a time (twin of torch_model/loss.py).

The plain path, `cross_entropy(h @ W.T, targets)`, exponentiates the (tokens x vocab) logits twice:
once for the log-sum-exp of the loss and again for the softmax of its gradient. Here one `exp`
per logit serves both, since the gradient (softmax - one_hot) / N is computed in the forward pass
and pushed through the projection; the vjp only scales it. MLX's CPU `exp` is slow, so on the
CPU this is most of the saving. Chunks cap the size of each vocabulary-sized array, but MLX's
lazy graph may hold several at once (measured on CPU: peak 1.8 -> 1.4 GB for 2048 tokens, bench/loss.py).
Lazy evaluation also means an eval-only call never computes the gradients it returns.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

# fp32 logits per chunk. On the CPU one big chunk measured fastest (MLX's lazy graph does not free a
# chunk before the next starts, so smaller chunks saved little memory); bounds the 124M config's
# 3.3 GB of logits per micro-batch to 1 GiB pieces.
CHUNK_BYTES = 2**30


def linear_cross_entropy(
    h: mx.array, weight: mx.array, targets: mx.array, denominator: mx.array | None = None
) -> mx.array:
    """Sum of cross_entropy(h @ weight.T, targets) over targets >= 0 (-1: no loss) / denominator (default:
    their count, i.e. the mean), softmax in fp32; h (..., d), weight (V, d)."""
    h2d = h.reshape(-1, h.shape[-1])  # (N, d)
    n_chunks = -(-h2d.shape[0] * weight.shape[0] * 4 // CHUNK_BYTES)  # ceil
    rows = -(-h2d.shape[0] // n_chunks)  # equal chunks, no small remainder
    targets = targets.reshape(-1)
    if denominator is None:
        denominator = mx.maximum((targets >= 0).sum(), 1)
    return _fused(rows)(h2d, weight, targets, mx.array(denominator, mx.float32))[0]


@lru_cache
def _fused(rows: int):
    """The custom function for one chunk size (a Python int, so mx.compile sees plain slices)."""

    @mx.custom_function
    def fused(h: mx.array, weight: mx.array, targets: mx.array, denominator: mx.array):
        """(loss, d loss / d h, d loss / d weight) over row chunks of h: (N, d), weight: (V, d); rows whose
        target is -1 add nothing."""
        N, V = h.shape[0], weight.shape[0]
        row_scale = ((targets >= 0) / denominator)[:, None].astype(h.dtype)  # (N, 1): 0 where no loss
        losses, grad_h, grad_w = [], [], None
        for start in range(0, N, rows):
            h_c, t = h[start : start + rows], targets[start : start + rows, None]  # (n, d), (n, 1)
            scale = row_scale[start : start + rows]  # (n, 1)
            logits = (h_c @ weight.T).astype(mx.float32)  # (n, V)
            top = logits.max(axis=-1, keepdims=True)  # (n, 1)
            exp = mx.exp(logits - top)  # (n, V): the one exp per logit
            total = exp.sum(axis=-1, keepdims=True)  # (n, 1)
            picked = mx.take_along_axis(logits, mx.maximum(t, 0), axis=-1)  # (n, 1)
            losses.append(((mx.log(total) + top - picked) * (t >= 0)).sum())
            grad = (exp / total - (mx.arange(V)[None, :] == t)).astype(h.dtype)  # (n, V) softmax - one_hot
            grad_h.append((grad @ weight) * scale)  # (n, d)
            grad_w_c = (grad.T @ (h_c * scale)).astype(mx.float32)  # (V, d)
            grad_w = grad_w_c if grad_w is None else grad_w + grad_w_c
        loss = mx.stack(losses).sum() / denominator
        return loss, mx.concatenate(grad_h), grad_w.astype(weight.dtype)

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
