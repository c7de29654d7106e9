"""Greedy decoding's LM head on the CPU: an int8 screen of every row, then fp32 for the few it cannot rule out.

A one-row decode step reads every weight once, and the LM head is most of those bytes (config.yaml's tied
GPT-2 head: 77 MB in fp32, the six layers 42 MB). Greedy decoding needs only the argmax. So the head is first
computed in integers from an int8 copy of the weights (one scale per row) and the hidden state rounded to
int8 (one scale per row of `h`): a quarter of the bytes, exact int32 sums (torch's `_int_mm`). Each screened
logit is within a proven bound of the fp32 one; the rows whose screened logit is within twice that bound of
the best are recomputed from the fp32 weights, and the argmax is taken among them. The fp32 head's argmax
always survives the screen, so the ids are those of the fp32 head (tests/test_greedy_head.py); when more than
`max_survivors` rows survive (a near-flat output) the full fp32 head runs instead.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch


def int8_kernel_available() -> bool:
    """torch's int8 x int8 -> int32 matmul on the CPU (`torch._int_mm`, private): checked by calling it once."""
    try:
        out = torch._int_mm(torch.ones(1, 32, dtype=torch.int8), torch.ones(8, 32, dtype=torch.int8).t())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(out.eq(32).all())


class GreedyHead:
    """The argmax of `h @ weight.T` for (B, d) fp32 rows `h`, `weight` (V, d) fp32 on the CPU. The arithmetic
    on vectors runs in numpy, whose per-call cost is far below torch's at these sizes."""

    def __init__(self, weight: torch.Tensor, max_survivors: int = 256):
        self.weight, self.max_survivors = weight, max_survivors
        self.q: torch.Tensor | None = None  # the int8 copy, made at the first call

    def build(self, chunk_rows: int = 8192) -> None:
        weight = self.weight
        V, d = weight.shape
        q, scale = torch.empty(V, d, dtype=torch.int8), torch.empty(V)
        quant_err, dequant_norm = torch.empty(V), torch.empty(V)  # per row: the bound's weight terms
        with torch.no_grad():
            for start in range(0, V, chunk_rows):  # in slices: no fp32 temporaries the size of the head
                rows = slice(start, start + chunk_rows)
                w = weight[rows].detach()  # (C, d)
                s = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)  # (C,)
                ints = torch.round(w / s[:, None]).clamp(-127, 127)  # (C, d) integers as floats
                dequant = ints * s[:, None]  # (C, d) what the screen multiplies by
                q[rows], scale[rows] = ints, s
                quant_err[rows], dequant_norm[rows] = (w - dequant).norm(dim=1), dequant.norm(dim=1)
        self.quant_err = quant_err.numpy() * 1.001  # (V,) |w_i - dequant_i|, up for the fp32 norms' rounding
        self.dequant_norm = dequant_norm.numpy() * 1.001  # (V,) |dequant_i|
        self.widest = float(self.quant_err.max()), float(self.dequant_norm.max())
        self.q = q.t()  # (d, V) a view of (V, d) int8: _int_mm's fast layout
        self.scale = scale.numpy()  # (V,)

    def survivors(self, h: torch.Tensor) -> list[np.ndarray]:
        """For each row of `h` (B, d), the ascending ids whose logit may be its largest.

        logit_i - screen_i = h.(w_i - dequant_i) + (h - h8).dequant_i, so by Cauchy-Schwarz
        |logit_i - screen_i| <= |h| quant_err_i + |h - h8| dequant_norm_i, + the screen's own fp32 rounding
        (two roundings of |screen_i| <= |h8| dequant_norm_i). One threshold from the largest bound over all
        rows first (a comparison per row), then each row's own bound on the few that pass."""
        if self.q is None:
            self.build()
        x = h.detach().numpy().astype(np.float64)  # (B, d)
        if not np.isfinite(x).all():  # no bound holds: every id survives, so the full head runs
            return [np.arange(self.weight.shape[0])] * len(x)
        h_scale = np.maximum(np.abs(x).max(axis=1) / 127, 1e-30)  # (B,)
        h8 = np.round(x / h_scale[:, None])  # (B, d) integers within +-127
        norm = partial(np.linalg.norm, axis=1)
        # per row i of the head: bound_i = (quant_err_i * a + dequant_norm_i * b) / h_scale, in screen units
        a = norm(x) / h_scale * 1.001  # (B,)
        b = (norm(x - h8 * h_scale[:, None]) + norm(h8 * h_scale[:, None]) * 2.0**-21) / h_scale * 1.001
        ints = torch._int_mm(torch.from_numpy(h8.astype(np.int8)), self.q).numpy()  # (B, V) exact int32 sums
        screen = np.multiply(ints, self.scale, dtype=np.float32)  # (B, V) the logits but for the factor h_scale
        widest = a * self.widest[0] + b * self.widest[1]  # (B,)
        ids = []
        for row, cutoff, a_row, b_row in zip(screen, screen.max(axis=1) - 2 * widest, a, b, strict=True):
            alive = np.flatnonzero(row >= cutoff)
            bound = a_row * self.quant_err[alive] + b_row * self.dequant_norm[alive]
            low, high = row[alive] - bound, row[alive] + bound  # the logit of each is between these
            ids.append(alive[high >= low.max()])  # the largest logit is at least low.max()
        return ids

    def argmax(self, h: torch.Tensor) -> torch.Tensor:
        """(B,) int64 ids: the first index of the largest fp32 logit of each row of `h` (B, d)."""
        weight, ids = self.weight.detach().numpy(), []
        for row, alive in zip(h.detach().numpy(), self.survivors(h), strict=True):
            if alive.size > self.max_survivors:
                ids.append(int((weight @ row).argmax()))
            else:  # ascending ids, so ties resolve to the first index as argmax does
                ids.append(int(alive[(weight[alive] @ row).argmax()]))
        return torch.tensor(ids)
