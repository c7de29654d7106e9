"""Would one matmul for q/k/v (and one for gate/up) speed up the torch step? Separate projections, as
torch_model/model.py has them, against the same weights concatenated per call into one matmul each.

    python bench/fused_projections.py                 # config.yaml's widths, 8 x 256 tokens, 30 turns
    python bench/fused_projections.py --tokens 512 --turns 10

Forward and backward of one layer's projections at (tokens, d_model): q, k, v and SwiGLU's gate and up.
The two variants take turns of one call each after a warm-up; the ratio is the median of the turns'
separate / fused. The checkpoint keeps HF's separate names either way, so only the speed is in question.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tinyllama.core.config import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--tokens", type=int, default=8 * 256, help="rows of the activations (batch x seq)")
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args()
    m = load_config(args.config).model
    hd = m.resolved_head_dim
    q_out, kv_out = m.n_heads * hd, m.n_kv_heads * hd
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.tokens, m.d_model, generator=generator, requires_grad=True)
    wq, wk, wv = (torch.randn(o, m.d_model, generator=generator, requires_grad=True) for o in (q_out, kv_out, kv_out))
    wg, wu = (torch.randn(m.d_ff, m.d_model, generator=generator, requires_grad=True) for _ in range(2))
    weights = (x, wq, wk, wv, wg, wu)

    def separate():
        q, k, v = F.linear(x, wq), F.linear(x, wk), F.linear(x, wv)
        return q, k, v, F.silu(F.linear(x, wg)) * F.linear(x, wu)

    def fused():
        q, k, v = F.linear(x, torch.cat([wq, wk, wv])).split([q_out, kv_out, kv_out], dim=-1)
        gate, up = F.linear(x, torch.cat([wg, wu])).chunk(2, dim=-1)
        return q, k, v, F.silu(gate) * up

    def step(forward) -> float:
        start = time.perf_counter()
        sum(out.sum() for out in forward()).backward()
        for w in weights:
            w.grad = None
        return time.perf_counter() - start

    with torch.no_grad():  # the same work: equal outputs
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(separate(), fused(), strict=True))
    variants = {"separate": separate, "fused": fused}
    for forward in variants.values():
        step(forward)  # warm-up
    seconds = {name: [] for name in variants}
    for _ in range(args.turns):
        for name, forward in variants.items():
            seconds[name].append(step(forward))
    ratio = statistics.median(a / b for a, b in zip(seconds["separate"], seconds["fused"], strict=True))
    print(f"{args.config}: d_model {m.d_model}, q/kv {q_out}/{kv_out}, d_ff {m.d_ff}, {args.tokens} tokens, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(", ".join(f"{name} {statistics.median(v) * 1e3:.1f} ms" for name, v in seconds.items()))
    print(f"separate / fused: {ratio:.2f}x (median of {args.turns} turns; > 1: one matmul each is faster)")


if __name__ == "__main__":
    main()
