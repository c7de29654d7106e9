"""The HTTP side of serve.py: a Starlette app with OpenAI's routes, the chat page, and every request bounded.

    GET /            the chat page (server/page.html: one file, no CDN)
    GET /health      {"status": "ok", running, queued, ...}, no key needed
    GET /v1/models   the one model served
    POST /v1/completions, /v1/chat/completions   answers whole or streamed (server-sent events ending in [DONE])

What a client can send is bounded: the body's size (413) and the time it takes to arrive (408), JSON and its
fields (server/protocol.py: 400, unknown model 404), the prompt against the context (400,
context_length_exceeded), the queue (503 when full, server/engine.py); with an API key every /v1 route needs
`Authorization: Bearer KEY` (401). A client that stops reading an answer for `client_timeout` seconds is cut
off, one that disconnects frees its row at the next step. Anything unexpected is a 500 with OpenAI's error
object and one line on the server's stderr, never a traceback to the client or a dead server.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tinyllama.core.sampling import TextStream
from tinyllama.server import protocol
from tinyllama.server.answers import Answer, sse
from tinyllama.server.engine import Busy, Done, Engine, Event, Job, Piece
from tinyllama.server.protocol import ApiError
from tinyllama.server.stops import StopText

PAGE = Path(__file__).with_name("page.html")


@dataclass
class Service:
    """What the routes need: the engine, the tokenizer and chat template (data/), the served model's facts."""

    engine: Engine
    tokenizer: Any  # data.tokenizer.Tokenizer
    template: Any  # data.chat.ChatTemplate
    stop_ids: frozenset[int]  # EOS ids (completions)
    chat_stop_ids: frozenset[int]  # + the template's end of turn (chat)
    model: str  # the id clients name
    max_seq_len: int
    vocab_size: int
    label: str  # backend, device, dtype
    api_key: str | None = None
    max_body: int = 1 << 20
    client_timeout: float = 30.0
    created: int = 0


class Channel:
    """A job's events, handed from the engine's thread to the event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, event: Event) -> None:  # the engine's thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening
            pass


def error_response(error: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 503 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def guarded(
    service: Service, handler: Callable[[Request], Awaitable[Any]], auth: bool = True
) -> Callable[[Request], Awaitable[Any]]:
    """The route `handler` with the API key checked, refusals as OpenAI errors and anything else a 500."""

    async def route(request: Request) -> Any:
        try:
            if auth and service.api_key is not None:
                given = request.headers.get("authorization", "")
                expected = f"Bearer {service.api_key}"
                if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
                    message = "missing or wrong API key: send 'Authorization: Bearer KEY'"
                    raise ApiError(401, message, code="invalid_api_key")
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody reads it
        except Exception as exc:
            print(f"error: {request.method} {request.url.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return error_response(ApiError(500, f"internal error ({type(exc).__name__}); see the server's log"))

    return route


async def read_json(request: Request, service: Service) -> dict[str, Any]:
    """The body, at most `max_body` bytes arriving within `client_timeout` seconds, as a JSON object."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > service.max_body):
        raise ApiError(413, f"the request body is over {service.max_body} bytes", code="body_too_large")
    chunks, size = [], 0
    try:
        with anyio.fail_after(service.client_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > service.max_body:
                    raise ApiError(413, f"the request body is over {service.max_body} bytes", code="body_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {service.client_timeout:g} s") from None
    return protocol.parse_json(b"".join(chunks))


def make_job(service: Service, req: protocol.Request, emit: Callable[[Event], None]) -> Job:
    """Token ids, token limit and stop rules of a checked request (run in a worker thread: a chat template is
    rendered, a long prompt encoded)."""
    tok = service.tokenizer
    if req.chat:
        from tinyllama.data.chat import prompt_ids
        from tinyllama.data.util import DataError

        try:
            ids = prompt_ids(tok, req.messages, service.template)
        except DataError as exc:
            raise ApiError(400, str(exc), "messages") from None
        stream, stop_ids, what = TextStream(tok.decode), service.chat_stop_ids, "messages"
    else:
        if isinstance(req.prompt, list):
            if not all(0 <= t < service.vocab_size for t in req.prompt):
                raise ApiError(400, f"'prompt' holds a token id outside 0..{service.vocab_size - 1}", "prompt")
            ids = list(req.prompt)
        else:
            ids = tok.encode_prompt(req.prompt) or [tok.bos_id if tok.bos_id is not None else tok.eos_id]
        stream, stop_ids, what = TextStream(tok.decode, ids), service.stop_ids, "prompt"
    room = service.max_seq_len - len(ids)
    if room < 1:
        raise ApiError(
            400,
            f"the {what} is {len(ids)} tokens; this model's context holds {service.max_seq_len} (prompt and answer)",
            what,
            "context_length_exceeded",
        )
    max_tokens = req.max_tokens if req.max_tokens is not None else (room if req.chat else min(16, room))
    if max_tokens > room:
        raise ApiError(
            400,
            f"{len(ids)} prompt tokens + max_tokens {max_tokens} exceed this model's context of "
            f"{service.max_seq_len} tokens; ask for at most {room}",
            "max_tokens",
            "context_length_exceeded",
        )
    return Job(ids, max_tokens, req.params, StopText(stream, req.stop), emit, req.seed, stop_ids, req.logprobs)


class JobResponse:
    """An ASGI response that runs one job: streamed as server-sent events or sent whole. It listens for the
    client's disconnect meanwhile (the job is cancelled, its row freed) and cuts off a client that does not
    take a piece within `client_timeout` seconds."""

    def __init__(self, service: Service, req: protocol.Request, job: Job, channel: Channel):
        self.service, self.req, self.job, self.channel = service, req, job, channel
        self.answer = Answer(req.chat, req.model, service.tokenizer.decode)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        async def send_within(message: dict) -> None:
            with anyio.fail_after(self.service.client_timeout):
                await send(message)

        async def watch(scope: anyio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.job.cancelled = True
            scope.cancel()

        self.scope = scope
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch, group.cancel_scope)
                await (self._stream(send_within) if self.req.stream else self._whole(send_within))
                group.cancel_scope.cancel()
        except TimeoutError:  # a client that stopped reading: cut off (uvicorn closes the connection)
            pass
        finally:
            self.job.cancelled = True  # no-op for a finished job

    async def _whole(self, send: Callable) -> None:
        while True:
            event = await self.channel.queue.get()
            if isinstance(event, Piece):
                self.answer.add(event.text, event.tokens)
                continue
            if event.reason in ("error", "cancelled"):
                response = error_response(failure(event))
            else:
                response = JSONResponse(self.answer.whole(event, self.req.logprobs is not None))
            await response(self.scope, None, send)
            return

    async def _stream(self, send: Callable) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": [*headers, (b"x-accel-buffering", b"no")]})

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        if self.req.chat:
            await write(sse(self.answer.role_chunk()))
        logprobs = self.req.logprobs is not None
        while True:
            event = await self.channel.queue.get()
            if isinstance(event, Piece):
                self.answer.add(event.text, event.tokens)
                if event.text or (logprobs and event.tokens):
                    await write(sse(self.answer.chunk(event.text, event.tokens, logprobs)))
                continue
            if event.reason in ("error", "cancelled"):
                await write(sse(failure(event).body()))
            else:
                await write(sse(self.answer.chunk("", [], False, event.reason)))
                if self.req.include_usage:
                    await write(sse(self.answer.usage_chunk(event)))
            await write(sse("[DONE]"))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return


def failure(done: Done) -> ApiError:
    if done.reason == "cancelled":
        return ApiError(503, "the server is shutting down; retry later", code="shutting_down")
    return ApiError(500, f"generation failed: {done.message}; see the server's log")


def create_app(service: Service) -> Starlette:
    page = PAGE.read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def health(request: Request) -> Response:
        status = service.engine.status()
        return JSONResponse({"status": "ok", "model": service.model, "backend": service.label, **status})

    def card() -> dict[str, Any]:
        return {"id": service.model, "object": "model", "created": service.created, "owned_by": "tiny-llama"}

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [card()]})

    async def model(request: Request) -> Response:
        if request.path_params["model"] != service.model:
            name = request.path_params["model"][:100]
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{service.model}'",
                           "model", "model_not_found")  # fmt: skip
        return JSONResponse(card())

    def generation(parse: Callable[[dict, str], protocol.Request]) -> Callable[[Request], Awaitable[Any]]:
        async def run(request: Request) -> Any:
            req = parse(await read_json(request, service), service.model)
            channel = Channel()
            job = await anyio.to_thread.run_sync(make_job, service, req, channel.emit)
            try:
                service.engine.submit(job)
            except Busy as exc:
                raise ApiError(503, str(exc), code="server_busy") from None
            return JobResponse(service, req, job, channel)

        return run

    routes = [
        Route("/", guarded(service, index, auth=False)),
        Route("/health", guarded(service, health, auth=False)),
        Route("/v1/models", guarded(service, models)),
        Route("/v1/models/{model:path}", guarded(service, model)),
        Route("/v1/completions", guarded(service, generation(protocol.completion_request)), methods=["POST"]),
        Route("/v1/chat/completions", guarded(service, generation(protocol.chat_request)), methods=["POST"]),
    ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        what = {404: "no such route", 405: "method not allowed"}.get(exc.status_code, exc.detail)
        message = f"{what}: {request.method} {request.url.path[:200]}"
        return error_response(ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def served_name(model: str) -> str:
    """The id clients name: the model argument's last path part (a Hub id as given)."""
    path = Path(model)
    return model if not path.exists() and "/" in model and not model.startswith((".", "/")) else path.name or model


def started_at(path: str) -> int:
    try:
        return int(Path(path).stat().st_mtime)
    except OSError:
        return int(time.time())
