"""Serve a model over OpenAI's API, with a chat page, batching concurrent users (MLX or PyTorch).

    python serve.py --model checkpoints/final.ckpt                       # http://127.0.0.1:8080/ (chat page)
    python serve.py --model checkpoints/final.ckpt --backend mlx --port 8000 --api-key secret
    python serve.py --model HuggingFaceTB/SmolLM2-135M-Instruct --host 0.0.0.0   # reachable from other machines

It loads what infer.py loads: a checkpoint, any Llama model directory (transformers', mlx_lm's, MLX-quantized
ones on --backend mlx), a .gguf file or a Hugging Face Hub id. Routes: GET / (the chat page), GET /health,
GET /v1/models, POST /v1/completions, POST /v1/chat/completions (the checkpoint's chat template, as
`infer.py --chat`), `stream: true` as server-sent events. Point any OpenAI client at http://HOST:PORT/v1.

Requests that arrive while others decode join the running batch between decode steps (up to --max-batch
rows; the rest wait in a queue of --max-queue, then 503). Ctrl-C or SIGTERM stops taking requests, lets
the running ones finish (up to --shutdown-timeout seconds) and exits 0. The API key can also come from the
TINYLLAMA_API_KEY environment variable (safer than the command line, which other users can see).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING

from tinyllama.convert.model_source import resolve_model
from tinyllama.core.backend import BACKENDS, load_backend, pick
from tinyllama.core.cli import ArgumentParser, UserError, install_extra, run_cli
from tinyllama.core.dtypes import dtype_arg
from tinyllama.core.model_files import is_mlx_quantized, read_eos_ids, read_model_config

if TYPE_CHECKING:
    import uvicorn

    from tinyllama.server.engine import Engine

KEY_ENV = "TINYLLAMA_API_KEY"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="serve.py", description=__doc__)
    p.add_argument(
        "--model",
        "--ckpt",
        required=True,
        help="a checkpoint (*.ckpt), a Llama model directory, a .gguf file or a Hugging Face Hub id",
    )
    p.add_argument("--tokenizer", help="gpt2, a HF tokenizer name/directory or tokenizer.json (default: the model's)")
    p.add_argument("--chat-template", help="a jinja2 chat template file (default: the tokenizer's, as infer.py --chat)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="default: %(default)s (as infer.py)")
    p.add_argument("--dtype", type=dtype_arg(), help="weights dtype: float32, bfloat16, float16 (default: the model's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="default: %(default)s; 0 = any free port (printed)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${KEY_ENV}, else none)")
    p.add_argument("--model-name", help="the model id clients send and /v1/models lists (default: the model's name)")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those; then 503 (default: 64)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default: 1 MiB)")
    p.add_argument(
        "--client-timeout",
        type=float,
        default=30.0,
        help="seconds a client may take to send its request or to take a piece of the answer (default: 30)",
    )
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds running requests get on Ctrl-C")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be between 0 and 65535, got {args.port}")
    for name in ("max_batch", "max_queue", "max_body"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("client_timeout", "shutdown_timeout"):
        if not 0 < getattr(args, name) < 1e6:
            p.error(f"--{name.replace('_', '-')} must be a positive number of seconds")
    args.api_key = args.api_key or os.environ.get(KEY_ENV) or None
    return args


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a port in use is one line, not uvicorn's log."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on --host {host}: {exc.strerror}; use an address of this machine") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        fix = "pick another --port (0: any free one)" if exc.errno == errno.EADDRINUSE else "check --host and --port"
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; {fix}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def backend_choice(args: argparse.Namespace, fast_blas: bool) -> tuple[str, str]:
    """(backend, device) as infer.py picks them; on Linux an MLX server re-executes itself with OpenBLAS
    preloaded, before it opens its socket."""
    auto_mlx = args.backend == "auto" and is_mlx_quantized(args.model)
    name, device = pick("mlx" if auto_mlx else args.backend)
    if fast_blas and name == "mlx":
        from tinyllama.mlx_model.blas import ensure_fast_blas

        ensure_fast_blas()
    return name, device


def chat_template(tok, file: str | None):
    """The template and the ids that end an answer, chosen as infer.py --chat chooses them (--chat-template's
    file, else the tokenizer's, else data.chat's default, with a note); a probe conversation is rendered, so a
    broken template fails here, before the model loads."""
    from tinyllama.data.chat import end_of_turn_ids, read_template, template_of, tokenizer_template

    if file is not None:
        template = read_template(file, "--chat-template")
    else:
        template = template_of(tok)
        if tokenizer_template(tok) is None:
            print("note: the tokenizer has no chat template; chat uses the default (<|user|> ... <|assistant|>)",
                  file=sys.stderr)  # fmt: skip
    return template, end_of_turn_ids(tok, template)


def load(args: argparse.Namespace, name: str, device: str):
    """(backend, tokenizer, template, EOS ids, chat end-of-turn ids): what infer.py --chat loads."""
    path = resolve_model(args.model)
    cfg = read_model_config(path)
    from tinyllama.data.tokenizer import checkpoint_tokenizer

    tok = checkpoint_tokenizer(path, args.tokenizer, cfg.vocab_size)
    template, turn_ends = chat_template(tok, args.chat_template)
    backend = load_backend(name, path, args.dtype, device)
    eos = frozenset(read_eos_ids(path) | {tok.eos_id})
    return backend, tok, template, eos, frozenset(eos | turn_ends)


def main(argv: list[str] | None = None, fast_blas: bool = False) -> None:
    args = parse_args(argv)
    try:
        import uvicorn

        from tinyllama.server.app import Service, create_app, served_name, started_at
        from tinyllama.server.engine import Engine
    except ModuleNotFoundError as exc:
        raise UserError(f"serving needs the {exc.name} package: {install_extra('serve')} in the clone") from None
    name, device = backend_choice(args, fast_blas)
    sock = listen(args.host, args.port)
    backend, tok, template, eos, chat_eos = load(args, name, device)
    engine = Engine(backend.new_row_batch, args.max_batch, args.max_queue)
    service = Service(
        engine, tok, template, eos, chat_eos, args.model_name or served_name(args.model), backend.config.max_seq_len,
        backend.config.vocab_size, backend.label, args.api_key, args.max_body, args.client_timeout,
        started_at(args.model),
    )  # fmt: skip
    config = uvicorn.Config(
        create_app(service),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=args.shutdown_timeout,
        limit_concurrency=args.max_batch + args.max_queue + 64,  # past it uvicorn answers 503 itself
        lifespan="off",
    )
    server = make_server(config)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving {service.model} ({backend.label}, batches of up to {args.max_batch}) at http://{shown}:{port}/ "
        f"(chat page); OpenAI API at http://{shown}:{port}/v1{', API key required' if args.api_key else ''}",
        flush=True,
    )
    failed: list[BaseException] = []
    web = threading.Thread(target=serve_http, args=(server, sock, engine, failed), name="http")
    with signals_drain(server):
        web.start()
        try:
            engine.run()  # decoding keeps the main thread (Engine.run says why)
        finally:
            server.should_exit = True
            web.join()
    if failed:
        raise failed[0]
    print("stopped", file=sys.stderr, flush=True)


def serve_http(server: uvicorn.Server, sock: socket.socket, engine: Engine, failed: list[BaseException]) -> None:
    """The HTTP side, in a thread of its own: uvicorn until it has drained, then the engine stops."""
    try:
        server.run(sockets=[sock])
    except BaseException as exc:  # handed to the main thread, which raises it
        failed.append(exc)
    finally:
        engine.stop()


@contextlib.contextmanager
def signals_drain(server: uvicorn.Server):
    """Ctrl-C / SIGTERM (delivered to the main thread) drain the server running in another thread."""
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, server.drain) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def make_server(config):
    """uvicorn's server, whose Ctrl-C / SIGTERM drains and returns (uvicorn itself re-raises the signal after its
    shutdown, which would end the process with a KeyboardInterrupt or a kill status). It runs outside the main
    thread, so it installs no handlers: signals_drain does, in the main thread."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

        def drain(self, sig: int, frame) -> None:
            if self.should_exit:  # a second Ctrl-C: stop waiting for running requests
                self.force_exit = True
                return
            print(f"{signal.Signals(sig).name}: finishing running requests, then exiting", file=sys.stderr, flush=True)
            self.should_exit = True

    return Server(config)


def cli() -> None:
    """The `tinyllama-serve` command."""
    run_cli(lambda: main(fast_blas=True))


if __name__ == "__main__":
    cli()
