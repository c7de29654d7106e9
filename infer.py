"""Generate text from a checkpoint (or any Llama-architecture HF directory) with MLX or PyTorch.

    python infer.py --ckpt checkpoints/final.ckpt --tokenizer gpt2 --prompt "The history of Dubai is"
    python infer.py --ckpt checkpoints/final.ckpt --temperature 0 --max-new-tokens 40 --prompt "A" --prompt "B"
    python infer.py --ckpt checkpoints/final.ckpt --prompt-file prompts.txt --seed 0    # one prompt per line
    python infer.py --ckpt checkpoints/final.ckpt                                      # interactive prompt loop
    echo "Once upon a time" | python infer.py --model checkpoints/final.ckpt -p - --temp 0.7 --min-p 0.05
    python infer.py --ckpt checkpoints/final.ckpt --chat --system-prompt "Be brief."  # chat: /reset, /exit
    python infer.py --ckpt checkpoints/final.ckpt --chat -p "What is the capital of France?"  # one answer

mlx_lm's names work too: --model for --ckpt, --max-tokens, --temp, -p.

Text streams to stdout as it is generated (the prompt first); speed and memory go to stderr.
--tokenizer defaults to the one saved in the checkpoint. --backend auto picks MLX on Apple Silicon,
CUDA when torch sees a GPU, else torch on the CPU (the faster CPU path).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tinyllama.convert.model_source import resolve_model
from tinyllama.core.backend import BACKENDS, Backend, load_backend, pick
from tinyllama.core.cli import ArgumentParser, UserError, exit_without_teardown, human_bytes, human_count, run_cli
from tinyllama.core.dtypes import dtype_arg
from tinyllama.core.model_files import is_mlx_quantized, read_eos_ids, read_model_config
from tinyllama.core.sampling import TextStream, fit_prompt, sampling_params
from tinyllama.core.text import checked, read_text

if TYPE_CHECKING:  # data.chat is imported when --chat asks for it
    from tinyllama.data.chat import ChatTemplate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="infer.py", description=__doc__)
    p.add_argument(
        "--ckpt",
        "--model",
        required=True,
        help="a checkpoint (*.ckpt), any Llama model directory (transformers', mlx_lm's; MLX-quantized ones run "
        "on --backend mlx), a .gguf file (dequantized on load) or a Hugging Face Hub id (safetensors only)",
    )
    p.add_argument("--tokenizer", help="gpt2, a HF tokenizer name/directory or tokenizer.json (default: the ckpt's)")
    p.add_argument(
        "-p", "--prompt", action="append", default=[], help="prompt text; repeat for several (batched); - = stdin"
    )
    p.add_argument("--prompt-file", help="a text file with one prompt per line (blank lines skipped)")
    p.add_argument(
        "--chat", action="store_true", help="chat through the chat template: a REPL, or one answer to --prompt"
    )
    p.add_argument("--system-prompt", help="--chat: a system message that starts the conversation")
    p.add_argument("--chat-template", help="--chat: a jinja2 template file (default: the tokenizer's)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="default: %(default)s")
    p.add_argument("--max-new-tokens", "--max-tokens", type=int, default=100, help="default: %(default)s")
    p.add_argument("--temperature", "--temp", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 = all")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass; 1 = off (default: %(default)s)")
    p.add_argument(
        "--min-p", type=float, default=0.0, help="drop tokens below min-p x the top one's probability; 0 = off"
    )
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (CTRL); 1 = off")
    p.add_argument("--seed", type=int, help="seed for sampling (default: a fresh one, printed on stderr)")
    p.add_argument(
        "--dtype",
        type=dtype_arg(),
        help="weights dtype: float32|fp32|f32, bfloat16|bf16, float16|fp16|f16 (default: the checkpoint's)",
    )
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be >= 1")
    if not args.chat and (args.system_prompt is not None or args.chat_template):
        p.error("--system-prompt and --chat-template need --chat")
    if args.chat and (len(args.prompt) > 1 or args.prompt_file):
        p.error("--chat takes one --prompt (or none, for a conversation), not several or --prompt-file")
    return args


def read_prompts(args: argparse.Namespace) -> list[str]:
    """--prompt (each, or the whole of stdin for `-`) and --prompt-file's lines, each checked to be UTF-8 text
    (core/text.py: a binary argument or stream is one line, not a tokenizer's TypeError)."""
    prompts = [checked(p, f"--prompt {i}") for i, p in enumerate(args.prompt, 1)]
    if "-" in prompts:  # `--prompt -`: the whole of standard input is one prompt
        try:
            stdin = checked(sys.stdin.read(), "standard input")
        except UnicodeDecodeError as exc:
            raise UserError(f"standard input is not UTF-8 text (byte offset {exc.start})") from None
        if not stdin.strip():
            raise UserError("--prompt - read an empty standard input; pipe the prompt in (echo 'text' | ...)")
        prompts = [stdin.rstrip("\n") if p == "-" else p for p in prompts]
    if args.prompt_file:
        text = read_text(args.prompt_file, "prompt file")
        prompts += [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise UserError(f"prompt file {args.prompt_file} has no prompts (one per line)")
    if args.system_prompt is not None:
        checked(args.system_prompt, "--system-prompt")
    return prompts


def fitted(ids: list[int], max_seq_len: int, max_new: int) -> tuple[list[int], int]:
    ids, max_new, note = fit_prompt(ids, max_seq_len, max_new)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return ids, max_new


def prompt_ids(tok, text: str, max_seq_len: int, max_new: int) -> tuple[list[int], int]:
    ids = tok.encode_prompt(text) or [tok.bos_id if tok.bos_id is not None else tok.eos_id]
    return fitted(ids, max_seq_len, max_new)


def stream_ids(backend: Backend, stream: TextStream, ids: list[int], opts: dict, max_new: int) -> tuple[list[int], str]:
    """Generate after `ids`, printing the text as tokens arrive; returns (the new ids, the speed line)."""
    start = time.perf_counter()
    first = end = start
    new: list[int] = []
    for token in backend.generate(ids, max_new, **opts):
        end = time.perf_counter()
        first = end if not new else first
        new.append(token)
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")
    sys.stdout.flush()
    n = len(new)
    prompt = f"prompt {len(ids)} tokens at {human_count(len(ids) / max(first - start, 1e-9))} tok/s"
    if n < 2 or end <= first:  # the first token comes with the prompt: a decode rate needs two
        return new, f"{prompt} | generated {n} token{'s' if n != 1 else ''}"
    return new, f"{prompt} | generated {n} tokens at {human_count((n - 1) / (end - first))} tok/s"


def stream_one(backend: Backend, tok, text: str, opts: dict, max_new: int) -> str:
    """Generate for one prompt, printing it and then the new text as tokens arrive; returns the speed line."""
    ids, max_new = prompt_ids(tok, text, backend.config.max_seq_len, max_new)
    sys.stdout.write(text)
    sys.stdout.flush()
    return stream_ids(backend, TextStream(tok.decode, ids), ids, opts, max_new)[1]


def chat_template(tok, file: str | None) -> tuple[ChatTemplate, set[int]]:
    """The template for --chat (--chat-template's file, else the tokenizer's, else data.chat's default, with
    a note) and the ids that end an answer (rendering a probe conversation: a broken template fails here)."""
    from tinyllama.data.chat import end_of_turn_ids, read_template, template_of, tokenizer_template

    if file is None:
        template = template_of(tok)
        if tokenizer_template(tok) is None:
            print(
                "note: the tokenizer has no chat template; using the default (<|user|> ... <|assistant|>)",
                file=sys.stderr,
            )
    else:
        template = read_template(file, "--chat-template")
    return template, end_of_turn_ids(tok, template)


def chat(
    backend: Backend,
    tok,
    template: ChatTemplate,
    args: argparse.Namespace,
    opts: dict,
    report: Callable[[str], None],
    prompt: str | None,
) -> None:
    """--chat: one answer to `prompt`, or a conversation read line by line from stdin."""
    from tinyllama.core.chat_repl import Conversation, run_chat
    from tinyllama.data.chat import prompt_ids as chat_ids  # jinja2: only --chat needs it

    max_seq_len = backend.config.max_seq_len
    reserve = min(args.max_new_tokens, max_seq_len // 2)  # kept for the answer; the rest is the conversation's

    def reply(ids: list[int]) -> str:
        max_new = min(args.max_new_tokens, max(max_seq_len - len(ids), reserve))
        ids, max_new = fitted(ids, max_seq_len, max_new)  # trims only a single turn too long for the context
        new, line = stream_ids(backend, TextStream(tok.decode), ids, opts, max_new)
        report(line)
        return tok.decode(new)

    conversation = Conversation(
        lambda messages: chat_ids(tok, messages, template), args.system_prompt, max_seq_len - reserve
    )
    run_chat(conversation, reply, prompt)


def run_batch(backend: Backend, tok, texts: list[str], opts: dict, max_new: int) -> str:
    """Several prompts: batched generation, completions printed in prompt order as they finish."""
    encoded = [prompt_ids(tok, text, backend.config.max_seq_len, max_new) for text in texts]
    limit = min(n for _, n in encoded)
    done: dict[int, list[int]] = {}
    start, printed, total = time.perf_counter(), 0, 0
    for index, new in backend.generate_batch([ids for ids, _ in encoded], limit, **opts):
        done[index] = new
        total += len(new)
        while printed in done:
            ids = encoded[printed][0]
            text = tok.decode(ids[-1:] + done[printed])[len(tok.decode(ids[-1:])) :]
            print(("\n" if printed else "") + texts[printed] + text, flush=True)
            printed += 1
    speed = human_count(total / max(time.perf_counter() - start, 1e-9))
    return f"{sum(len(ids) for ids, _ in encoded)} prompt tokens, {total} generated, {speed} tok/s overall"


def main(argv: list[str] | None = None, fast_blas: bool = False) -> None:
    args = parse_args(argv)
    auto_mlx = args.backend == "auto" and is_mlx_quantized(args.ckpt)  # only MLX runs its weights
    name, device = pick("mlx" if auto_mlx else args.backend)
    if fast_blas and name == "mlx":
        from tinyllama.mlx_model.blas import ensure_fast_blas

        ensure_fast_blas()  # Linux: re-exec with OpenBLAS preloaded (this process never runs torch)
    args.ckpt = resolve_model(args.ckpt)  # a .gguf file or a Hub id becomes a local directory
    cfg = read_model_config(args.ckpt)  # fails early, in one line, on a missing or broken checkpoint
    names = ("temperature", "top_k", "top_p", "repetition_penalty", "min_p")
    try:
        params = sampling_params({name: getattr(args, name) for name in names})
    except ValueError as exc:
        raise UserError(str(exc)) from None
    prompts = read_prompts(args)
    from tinyllama.data.tokenizer import checkpoint_tokenizer

    tok = checkpoint_tokenizer(args.ckpt, args.tokenizer, cfg.vocab_size)
    template, stops = chat_template(tok, args.chat_template) if args.chat else (None, set())
    backend = load_backend(name, args.ckpt, args.dtype, device)
    seed = args.seed
    if seed is None and not params.greedy:
        seed = int(time.time_ns() % 2**31)
    opts = dict(vars(params), seed=seed, eos_id=read_eos_ids(args.ckpt) | {tok.eos_id} | stops)
    label = backend.label + (f", seed {seed}" if seed is not None else "")

    def report(line: str) -> None:
        peak = backend.peak_memory()
        print(f"[{label}] {line} | peak memory {human_bytes(peak) if peak else 'n/a'}", file=sys.stderr)

    if args.chat:
        chat(backend, tok, template, args, opts, report, prompts[0] if prompts else None)
    elif len(prompts) == 1:
        report(stream_one(backend, tok, prompts[0], opts, args.max_new_tokens))
    elif prompts:
        report(run_batch(backend, tok, prompts, opts, args.max_new_tokens))
    else:
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                print("prompt (empty line or Ctrl-D to quit)> ", end="", file=sys.stderr, flush=True)
            try:
                line = checked(sys.stdin.readline(), "standard input")
            except UnicodeDecodeError as exc:
                raise UserError(f"standard input is not UTF-8 text (byte offset {exc.start})") from None
            if not line.strip():
                break
            report(stream_one(backend, tok, line.rstrip("\n"), opts, args.max_new_tokens))


def cli() -> None:
    """The `tinyllama-infer` command."""
    run_cli(lambda: main(fast_blas=True))
    exit_without_teardown()  # ~0.6 s sooner back at the prompt (core.cli)


if __name__ == "__main__":
    cli()
