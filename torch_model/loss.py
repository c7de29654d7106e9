"""Next-token loss fused with the output projection, a chunk of rows at a time.

`F.cross_entropy(h @ W.T, targets)` materialises four vocab-wide tensors per step: the logits,
their log-softmax, a zero-filled gradient and the log-softmax backward (each tokens x vocab). Here a
chunk's logits live in one reused buffer: the forward pass computes the loss *and* the logits' gradient
and pushes that straight through the projection, so backward only scales two saved gradients. The loss
of a chunk is `chunk_loss`, a plain function of its logits; its gradient comes from autograd, or, for
plain cross-entropy (the common case), from softmax - one_hot computed in place in the reused buffers.
Same math as the plain path (tests compare losses and gradients); the memory and speed it saves:
docs/benchmarks.md (bench/loss.py).
"""

from __future__ import annotations

import torch

# fp32 logits per chunk. CPU: 128 MiB measured fastest of 8-512 MiB (smaller chunks re-read the
# (vocab, d) weight gradient too often, larger ones fall out of cache). Elsewhere 1 GiB: fewer, larger
# GEMMs, still a fraction of the 4 full-size tensors it replaces (docs/benchmarks.md).
CHUNK_BYTES = {"cpu": 128 * 2**20}
DEFAULT_CHUNK_BYTES = 2**30


def chunk_bytes(device_type: str) -> int:
    return CHUNK_BYTES.get(device_type, DEFAULT_CHUNK_BYTES)


def held_bytes(
    tokens: int, vocab: int, d_model: int, device_type: str, dtype: str, compiled: bool, plain: bool = True
) -> float:
    """Bytes the fused loss allocates at its peak over a step's `tokens`, for --dry-run's memory estimate
    (tests/test_loss.py measures it): buffers of one chunk's fp32 logits size, and 8 bytes per head weight
    (fp32: the gradient sum and addmm's product; bf16: the fp32 sum, the bf16 product, the weight's bf16 copy).
    `plain`: cross-entropy alone (plain_cross_entropy), whose gradient needs fewer buffers than autograd's."""
    full = tokens * vocab * 4  # fp32 logits
    chunk = full / -(-full // chunk_bytes(device_type))  # the chunks are equal
    if compiled and device_type in COMPILED_LOSS_DEVICES:
        buffers = 1.0  # bf16 logits and bf16 gradient, a few fused kernels between them (not measured since autograd)
    elif not plain:
        buffers = 5.0 if dtype == "float32" else 5.45  # autograd's logsumexp, its backward, the gather's scatter
    elif dtype == "float32":
        buffers = 2.0  # the logits and their softmax, made into the gradient in place
    else:
        buffers = 3.0  # bf16 logits, their fp32 copy, the fp32 softmax and its bf16 copy
    return buffers * chunk + 8 * vocab * d_model


def chunk_loss(logits: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor, training=None) -> torch.Tensor:
    """The loss of one chunk of rows, summed over the kept ones: a plain function of the chunk's (n, V) logits,
    (n, 1) targets and (n, 1) kept mask. A new loss term is written here, once; autograd differentiates it
    (`training`: the run's TrainingConfig, for terms only training adds; None for evaluation)."""
    x = logits.float()  # (n, V)
    log_z = torch.logsumexp(x, dim=-1, keepdim=True)  # (n, 1)
    loss = log_z - x.gather(1, targets)  # (n, 1): cross-entropy
    if training is not None and training.z_loss:  # PaLM's z-loss: keeps log Z, the softmax's normaliser, near 0
        loss = loss + training.z_loss * log_z.square()
    return (loss * kept).sum()


def plain_cross_entropy(transform, training) -> bool:
    """Whether chunk_loss is cross-entropy of the raw logits alone, whose gradient the fused path below computes
    in reused buffers (softmax - one_hot) instead of autograd: the common case, and the fast one on a CPU."""
    return transform is None and not (training is not None and training.z_loss)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    denominator: torch.Tensor | None = None,
    transform=None,
    training=None,
) -> torch.Tensor:
    """Sum of chunk_loss(transform(h @ weight.T), targets) over targets >= 0 (-1: no loss) / denominator
    (default: their count, i.e. the mean), softmax in fp32; h (..., d), weight (V, d). `transform`: what the
    model does to its logits (None: nothing); `training`: chunk_loss's training-only terms."""
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    h2d = h.reshape(-1, h.shape[-1]).to(dtype)  # (N, d) in the matmul dtype, as autocast would run F.linear
    n_chunks = -(-h2d.shape[0] * weight.shape[0] * 4 // chunk_bytes(device))  # ceil
    rows = -(-h2d.shape[0] // n_chunks)  # equal chunks, no small remainder
    targets = targets.reshape(-1)
    if denominator is None:
        denominator = (targets >= 0).sum().clamp_min(1)
    terms = (transform, training)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h2d, weight, targets, denominator, rows, terms)
    with torch.no_grad():
        return _chunked(h2d, weight, targets, denominator, rows, terms, with_grads=False)[0]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, denominator, rows, terms):
        loss, grad_h, grad_w = _chunked(h, weight, targets, denominator, rows, terms, with_grads=True)
        ctx.grads, ctx.weight_dtype = (grad_h, grad_w), weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.grads
        del ctx.grads
        return grad_h.mul_(grad_loss), grad_w.mul_(grad_loss).to(ctx.weight_dtype), None, None, None, None


def keep_eager_under_compile() -> None:
    """Make torch.compile graph the model around the chunked loss, which runs eagerly with its reused
    buffers; on a GPU each chunk's loss and its gradient then run as compiled kernels (_compiled_chunk_loss).
    Called before compiling (torch_model/wrap.py), not at import: `torch.compiler.disable` imports
    torch._dynamo, a slow import every eager process (infer, evaluate, CPU training) would pay for nothing."""
    global _chunked, _compiled_chunk_loss
    if not getattr(_chunked, "_eager_under_compile", False):
        _chunked = torch.compiler.disable(_chunked)
        _chunked._eager_under_compile = True
        _compiled_chunk_loss = torch.compile(_transformed_loss, dynamic=False)


def _transformed_loss(logits, targets, kept, transform, training) -> torch.Tensor:
    return chunk_loss(transform(logits) if transform is not None else logits, targets, kept, training)


# Set by keep_eager_under_compile; used on these devices: compiled, a chunk's loss and its autograd backward
# become a few fused kernels that read the bf16 logits without an fp32 copy (on a GPU the eager loss's fp32
# copy, log_softmax and softmax were a large share of the step; docs/benchmarks.md).
_compiled_chunk_loss = None
COMPILED_LOSS_DEVICES = {"cuda"}


def _loss_and_grad(logits: torch.Tensor, t: torch.Tensor, kept: torch.Tensor, terms, compiled: bool):
    """A chunk's summed loss and d loss / d logits (in the logits' dtype) by autograd through chunk_loss."""
    x = logits.detach().requires_grad_()  # (n, V)
    with torch.enable_grad():
        loss = (_compiled_chunk_loss if compiled else _transformed_loss)(x, t, kept, *terms)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def _chunked(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, denominator, rows: int, terms, with_grads):
    """Loss (and d loss / d h, d loss / d weight) over row chunks of h: (N, d), weight: (V, d); rows whose
    target is -1 add nothing. Matmuls run in h's dtype; the weight gradient is summed in fp32 and returned
    in the weight's. Each chunk's loss is chunk_loss; its gradient w.r.t. the logits comes from autograd, or,
    for plain cross-entropy on an eager device, from softmax - one_hot computed in place in reused buffers."""
    N, V = h.shape[0], weight.shape[0]
    weight = weight.to(h.dtype)  # (V, d) the autocast copy; a no-op in fp32
    logits_buf = torch.empty(min(rows, N), V, dtype=h.dtype, device=h.device)  # (C, V) matmul output
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if with_grads else None  # (N, d)
    grad_w = None  # (V, d) fp32 sum over chunks
    kept = (targets >= 0)[:, None]  # (N, 1)
    row_scale = kept.to(h.dtype) / denominator  # (N, 1): 1/denominator, 0 where there is no loss
    h_scaled = h * row_scale if with_grads else None  # on the narrow side of the weight gradient
    compiled = _compiled_chunk_loss is not None and h.device.type in COMPILED_LOSS_DEVICES
    fused = plain_cross_entropy(*terms) and not compiled  # softmax - one_hot in place
    probs_buf = torch.empty(min(rows, N), V, dtype=torch.float32, device=h.device) if fused else None  # (C, V)
    for start in range(0, N, rows):
        end = min(start + rows, N)
        n, t = end - start, targets[start:end, None].long().clamp_min(0)  # (n, 1)
        logits = torch.mm(h[start:end], weight.t(), out=logits_buf[:n])  # (n, V) in h's dtype
        if not fused and not with_grads:
            loss += _transformed_loss(logits, t, kept[start:end], *terms)
            continue
        if not fused:
            chunk, grad = _loss_and_grad(logits, t, kept[start:end], terms, compiled)
            loss += chunk
            grad = grad.to(h.dtype)
        else:
            logits = logits.float()  # (n, V) fp32 view or copy
            log_probs = torch.log_softmax(logits, dim=-1, out=probs_buf[:n])  # (n, V)
            loss -= log_probs.gather(1, t).mul_(kept[start:end]).sum()
            if not with_grads:
                continue
            grad = torch.softmax(logits, dim=-1, out=probs_buf[:n])  # (n, V) d loss_i / d logits_i = p - onehot
            grad.scatter_add_(1, t, torch.full_like(t, -1, dtype=grad.dtype))
            grad = grad.to(h.dtype)
        torch.mm(grad, weight, out=grad_h[start:end])  # (n, d)
        if grad_w is None:
            grad_w = torch.mm(grad.t(), h_scaled[start:end]).float()  # (V, d)
        elif grad.dtype == torch.float32:
            grad_w.addmm_(grad.t(), h_scaled[start:end])
        else:
            grad_w += grad.t() @ h_scaled[start:end]  # bf16 product, fp32 sum
        del grad  # before the next chunk's gradient is made (autograd: a new tensor each chunk)
    if with_grads:
        grad_h *= row_scale
    return loss / denominator, grad_h, grad_w
