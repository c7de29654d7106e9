"""Serving under concurrent users: serve.py (torch, MLX) against mlx_lm.server, same checkpoint, same clients.

    python bench/serve.py                                  # config.yaml's model, random weights, all three servers
    python bench/serve.py --servers torch mlx --new-tokens 64

Each server runs alone on the machine as a subprocess (MLX ones with OpenBLAS preloaded, as serve.py and
mlx_model/blas.py set it up; mlx_lm.server gets the same environment). The clients are raw asyncio HTTP/1.1
connections streaming /v1/completions (greedy, `stream_options.include_usage` for the token counts), light
enough to leave the cores to the server. Reported per server:

- one client: completion tokens / wall time over sequential requests;
- 8 clients: aggregate completion tokens / wall time with 8 streaming requests started together;
- TTFT: median time to the first streamed text of a short request, alone and while 7 other clients stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyllama.core.architecture import count_parameters, init_weights  # noqa: E402
from tinyllama.core.checkpoint import save_checkpoint  # noqa: E402
from tinyllama.core.config import load_config  # noqa: E402

PROMPT = "The history of the city begins with a small harbour on the river, where traders from the north"


async def stream(port: int, max_tokens: int, prompt: str = PROMPT) -> tuple[float, int, float]:
    """One streamed completion: (time to first text, completion tokens, total time)."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()  # fmt: skip
    head = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
    first, tokens, chunks = None, None, 0
    async for line in reader:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        data = json.loads(line[6:])
        if data.get("usage"):
            tokens = data["usage"]["completion_tokens"]
        if data.get("choices") and data["choices"][0].get("text"):
            chunks += 1
            first = first or time.perf_counter() - start
    writer.close()
    return first or float("nan"), tokens if tokens is not None else chunks, time.perf_counter() - start


async def measure(port: int, new_tokens: int, clients: int, probes: int) -> dict[str, float]:
    await stream(port, 8)  # warm-up
    one = [await stream(port, new_tokens) for _ in range(2)]
    single = sum(t for _, t, _ in one) / sum(d for _, _, d in one)
    start = time.perf_counter()
    many = await asyncio.gather(*(stream(port, new_tokens) for _ in range(clients)))
    aggregate = sum(t for _, t, _ in many) / (time.perf_counter() - start)
    alone = [(await stream(port, 8))[0] for _ in range(probes)]
    stop = asyncio.Event()

    async def background() -> None:
        while not stop.is_set():
            await stream(port, new_tokens)

    others = [asyncio.create_task(background()) for _ in range(clients - 1)]
    await asyncio.sleep(2.0)  # the others are streaming
    loaded = []
    for _ in range(probes):
        loaded.append((await stream(port, 8))[0])
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*others)
    return {
        "single": single, "aggregate": aggregate, "ttft_alone": statistics.median(alone),
        "ttft_loaded": statistics.median(loaded),
    }  # fmt: skip


def mlx_env() -> dict[str, str]:
    """OpenBLAS preloaded and malloc kept, as mlx_model.blas.ensure_fast_blas re-executes serve.py with."""
    from tinyllama.mlx_model.blas import find_openblas

    env = dict(os.environ, TINY_LLAMA_BLAS="openblas", MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(64 << 30))
    lib = find_openblas()
    if lib:
        env["LD_PRELOAD"] = ":".join(filter(None, [lib, os.environ.get("LD_PRELOAD")]))
    return env


def start(server: str, ckpt: Path, port: int) -> subprocess.Popen:
    if server == "mlx_lm":
        command = [sys.executable, "-m", "mlx_lm.server", "--model", str(ckpt), "--port", str(port)]
        env = mlx_env()
    else:
        command = [sys.executable, str(ROOT / "serve.py"), "--model", str(ckpt), "--backend", server,
                   "--port", str(port), "--model-name", "bench"]  # fmt: skip
        env = mlx_env() if server == "mlx" else dict(os.environ)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            asyncio.run(stream(port, 1))
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{server} did not start on port {port}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", nargs="+", default=["torch", "mlx", "mlx_lm"], choices=["torch", "mlx", "mlx_lm"])
    p.add_argument("--config", default=str(ROOT / "config.yaml"), help="model size (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=96, help="tokens per streamed request (default: 96)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--probes", type=int, default=5, help="short requests timed for TTFT (median)")
    p.add_argument("--port", type=int, default=8391)
    args = p.parse_args()
    from tinyllama.data.tokenizer import load_tokenizer

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config).model
        tok = load_tokenizer("gpt2").save(Path(tmp) / "tok")
        ckpt = save_checkpoint(Path(tmp) / "bench", init_weights(cfg, seed=0), cfg, tokenizer_dir=tok)
        print(f"model: {args.config}'s, {count_parameters(cfg) / 1e6:.1f}M params, random init weights; "
              f"{args.new_tokens} new tokens per request, {args.clients} clients", flush=True)  # fmt: skip
        for server in args.servers:
            proc = start(server, ckpt, args.port)
            try:
                r = results[server] = asyncio.run(measure(args.port, args.new_tokens, args.clients, args.probes))
            finally:
                proc.terminate()
                proc.wait(60)
            print(f"{server:7s} 1 client {r['single']:6.1f} tok/s | {args.clients} clients {r['aggregate']:6.1f} tok/s "
                  f"({r['aggregate'] / r['single']:.2f}x) | TTFT alone {r['ttft_alone'] * 1000:6.0f} ms, with "
                  f"{args.clients - 1} streaming {r['ttft_loaded'] * 1000:6.0f} ms "
                  f"({r['ttft_loaded'] / r['ttft_alone']:.2f}x)", flush=True)  # fmt: skip
    if "mlx_lm" in results:
        for server in set(results) - {"mlx_lm"}:
            ratio = results[server]["aggregate"] / results["mlx_lm"]["aggregate"]
            print(f"{server} vs mlx_lm.server, {args.clients} clients aggregate: {ratio:.2f}x")


if __name__ == "__main__":
    main()
