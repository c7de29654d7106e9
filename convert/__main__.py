"""`python -m convert`: import Hugging Face / GGUF Llama models, export GGUF, MLX-quantized and HF releases.

Thin argument parsing only; the work lives in the sibling modules. Every command reads and checks
all of its input before it writes anything, and writes OUT atomically (temp path, then rename),
so bad input means one line on stderr, exit code 2 and no OUT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinyllama.core.cli import ArgumentParser, exit_without_teardown, module_prog, run_cli
from tinyllama.core.dtypes import canonical_dtype, dtype_arg

GGUF_NAMES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}  # GGUF spells the float types its own way


def gguf_type(text: str) -> str:
    """--dtype of export-gguf: GGUF's names (f16, q8_0, ...), float types in any spelling."""
    from tinyllama.convert.gguf_export import GGUF_DTYPES

    name = GGUF_NAMES.get(canonical_dtype(text.strip()), text.strip().lower())
    if name not in GGUF_DTYPES:
        raise argparse.ArgumentTypeError(f"unknown GGUF type {text!r}; use one of {', '.join(GGUF_DTYPES)}")
    return name


EXAMPLES = """examples:
  python -m convert import path/to/SmolLM2-135M checkpoints/smollm2.ckpt        # HF directory (sharded ok)
  python -m convert import model.Q8_0.gguf checkpoints/from-gguf.ckpt           # GGUF, dequantized
  python -m convert export-gguf checkpoints/final.ckpt model.gguf --dtype q8_0  # llama.cpp / Ollama
  python -m convert export-mlx checkpoints/final.ckpt model-4bit --q-bits 4     # mlx_lm.load / generate
  python -m convert export-hf checkpoints/final.ckpt release/ --dtype bf16       # transformers release
  python -m convert inspect checkpoints/final.ckpt
"""


def _parser() -> argparse.ArgumentParser:
    from tinyllama.convert.gguf_export import GGUF_DTYPES

    parser = ArgumentParser(
        prog=module_prog("convert"),
        description="Move Llama models between our checkpoints, Hugging Face, GGUF (llama.cpp/Ollama) and MLX.",
        epilog=EXAMPLES,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description)

    p = command(
        "import",
        "HF Llama directory or .gguf file -> our checkpoint",
        "Turn a Hugging Face Llama model directory (safetensors, sharded or not, tied or untied, any head_dim) "
        "or a llama-architecture .gguf file (dequantized) into a checkpoint both trainers can fine-tune "
        "(--training.init_from OUT). Refuses other architectures, biases and RoPE scaling instead of "
        "loading wrong weights.",
    )
    p.add_argument("src", help="HF model directory (config.json + *.safetensors) or a .gguf file")
    p.add_argument("out", help="checkpoint directory to write, e.g. checkpoints/base.ckpt")
    p.add_argument(
        "--dtype",
        default="auto",
        type=dtype_arg(("float32", "bfloat16"), extra=("auto",)),
        help="weight dtype: auto | float32 (fp32) | bfloat16 (bf16); auto: bfloat16 sources stay bfloat16, "
        "everything else float32",
    )
    p.add_argument("--tokenizer", metavar="DIR", help="use this tokenizer directory instead of the source's")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")

    p = command(
        "export-gguf",
        "checkpoint -> .gguf for llama.cpp / Ollama",
        "Write a GGUF file (llama architecture, byte-level BPE tokenizer as metadata with an explicit "
        "tokenizer.ggml.pre) that llama.cpp, Ollama and transformers (gguf_file=) load. Norms stay f32.",
    )
    p.add_argument("ckpt", help="checkpoint or HF model directory")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument(
        "--dtype",
        default="f16",
        type=gguf_type,
        help=f"tensor type for matrices: {', '.join(GGUF_DTYPES)} (float16/fp16 = f16, ...; q8_0: 8-bit blocks of "
        "32, ~1/4 of f32's size)",
    )
    p.add_argument("--tokenizer", metavar="DIR", help="take tokenizer.json from DIR instead of the checkpoint")
    p.add_argument(
        "--tokenizer-pre",
        metavar="NAME",
        help="llama.cpp pre-tokenizer name (gpt-2, smollm, llama-bpe) when it cannot be detected",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")

    p = command(
        "export-mlx",
        "checkpoint -> MLX-quantized directory (mlx_lm.load)",
        "Quantize linear layers and the embedding with mlx-lm's own quantization; the directory loads with "
        "mlx_lm.load / mlx_lm.generate.",
    )
    p.add_argument("ckpt", help="checkpoint or HF model directory")
    p.add_argument("out", help="directory to write")
    p.add_argument("--q-bits", type=int, default=4, help="bits per weight: 2, 3, 4, 5, 6 or 8 (default 4)")
    p.add_argument("--q-group-size", type=int, default=64, help="weights sharing one scale: 32, 64, 128")
    p.add_argument(
        "--dtype",
        type=dtype_arg(),
        help="dtype of scales and unquantized tensors: float32|fp32|f32, bfloat16|bf16, float16|fp16|f16 "
        "(default: the checkpoint's)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")

    p = command(
        "export-hf",
        "checkpoint -> clean Hugging Face release directory",
        "Write only what transformers needs (weights cast to --dtype, config.json with that torch_dtype, "
        "tokenizer, generation_config.json, a model card): no optimizer or trainer state.",
    )
    p.add_argument("ckpt", help="checkpoint directory")
    p.add_argument("out", help="directory to write")
    p.add_argument(
        "--dtype",
        default="bfloat16",
        type=dtype_arg(),
        help="weight dtype: float32|fp32|f32, bfloat16|bf16, float16|fp16|f16 (default: bfloat16)",
    )
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload to this Hub repo (needs network + login)")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")

    p = command(
        "inspect",
        "show config, parameters, dtype, size, training progress",
        "Summarize a checkpoint, HF/MLX model directory or .gguf file from headers and JSON only (fast).",
    )
    p.add_argument("path", help="checkpoint / model directory / .gguf file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "import":
        if Path(args.src).suffix.lower() == ".gguf":
            from tinyllama.convert.gguf_import import import_gguf

            dtype = "float32" if args.dtype == "auto" else args.dtype
            out = import_gguf(args.src, args.out, dtype=dtype, tokenizer=args.tokenizer, force=args.force)
        else:
            from tinyllama.convert.hf_import import import_hf

            out = import_hf(args.src, args.out, dtype=args.dtype, tokenizer=args.tokenizer, force=args.force)
        print(f"wrote {out}  (fine-tune it with --training.init_from {out})")
    elif args.command == "export-gguf":
        from tinyllama.convert.gguf_export import export_gguf

        out = export_gguf(
            args.ckpt,
            args.out,
            dtype=args.dtype,
            tokenizer=args.tokenizer,
            tokenizer_pre=args.tokenizer_pre,
            force=args.force,
        )
        print(f"wrote {out}")
    elif args.command == "export-mlx":
        from tinyllama.convert.mlx_export import export_mlx

        out = export_mlx(
            args.ckpt, args.out, q_bits=args.q_bits, q_group_size=args.q_group_size, dtype=args.dtype, force=args.force
        )
        print(f"wrote {out}  (python -c \"import mlx_lm; mlx_lm.load('{out}')\")")
    elif args.command == "export-hf":
        from tinyllama.convert.hf_export import export_hf, push_to_hub

        out = export_hf(args.ckpt, args.out, dtype=args.dtype, force=args.force)
        print(f"wrote {out}")
        if args.push_to_hub:
            print(f"uploaded: {push_to_hub(out, args.push_to_hub, private=args.private)}")
    elif args.command == "inspect":
        from tinyllama.convert.describe import describe, format_info

        info = describe(args.path)
        print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))


def cli() -> None:
    """The `tinyllama-convert` command."""
    run_cli(main)
    exit_without_teardown()  # ~0.6 s sooner back at the prompt (core.cli)


if __name__ == "__main__":
    cli()
