"""The GPU itself, before any training figure: its name, versions, the bf16 matmul rate it really gives,
and whether our attention runs on SDPA's flash kernel (bf16, causal, MHA and GQA, forward and backward).

    python bench/cuda_probe.py [--json out.json]

A measured matmul rate next to the card's published peak says how much of an MFU gap is the card's
clock and how much is ours. Flash is checked by allowing SDPA no other backend: if our shapes or dtypes
could not use it, torch raises instead of quietly falling back to the math kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from tinyllama.core.config import ModelConfig  # noqa: E402
from tinyllama.core.hardware import measured_peak_flops, peak_flops  # noqa: E402
from tinyllama.torch_model.state import build_model  # noqa: E402


def matmul_tflops(n: int = 8192) -> float:
    """bf16 n x n matmul rate, best of ten bursts over a second (core.hardware.measured_peak_flops)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return measured_peak_flops(lambda: (a @ a, torch.cuda.synchronize()), n) / 1e12


def flash_step(n_kv_heads: int) -> float:
    """Our model's forward + backward with SDPA limited to the flash kernel; returns the largest logit
    difference from the same step on the math kernel."""
    cfg = ModelConfig(vocab_size=1024, n_layers=2, d_model=512, n_heads=8, n_kv_heads=n_kv_heads, d_ff=1376,
                      max_seq_len=1024)  # fmt: skip
    model = build_model(cfg, device="cuda")
    x = torch.randint(0, cfg.vocab_size, (4, 1024), device="cuda")
    outs = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
            logits.float().square().mean().backward()
        outs.append(logits.float())
    return (outs[0] - outs[1]).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: torch sees no CUDA GPU; run this on an NVIDIA GPU with a CUDA build of torch", file=sys.stderr)
        sys.exit(2)
    name = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(0)
    import transformers

    figures = {"gpu": name, "memory_gb": props.total_memory / 1e9, "sm_count": props.multi_processor_count}
    figures |= {"capability": f"{props.major}.{props.minor}", "torch": torch.__version__}
    figures |= {"cuda": torch.version.cuda, "transformers": transformers.__version__}
    published = peak_flops(name, "bfloat16")
    figures |= {"published_bf16_tflops": published / 1e12 if published else None, "matmul_bf16_tflops": matmul_tflops()}
    for label, kv in (("flash_mha_max_diff", 8), ("flash_gqa_max_diff", 2)):
        figures[label] = flash_step(kv)
    for key, value in figures.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
