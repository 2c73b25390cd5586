"""The HTTP side of `distill serve`: a Starlette application (run by uvicorn, `distill.serve.server`).

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (JSON, or Server-Sent Events with
`stream: true`), `GET /v1/models`, `GET /v1/models/{id}`, and `GET /health`, the one route open
without the API key. Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
so OpenAI clients show our message.

Every choice is one job of the continuous-batching engine; its tokens come back to the event loop
as they are made. A client that disconnects (mid-stream or while waiting for a whole answer) aborts
its jobs at the next decode step, and a stop sequence ends its choice there too.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from distill.serve.output import (
    ChoiceText,
    chat_logprobs,
    echoed_logprobs,
    response_head,
    text_logprobs,
    usage,
)
from distill.serve.protocol import GenRequest, HTTPError, parse_chat, parse_completion, shutting_down

log = logging.getLogger(__name__)


@dataclass
class _Done:
    """One finished choice: its last text piece, finish reason and the engine's result."""

    choice: int
    piece: str
    finish_reason: str
    generated: Any


def build_app(server: Any) -> Starlette:
    """The application for `server` (a `distill.serve.server.Server`)."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(server)]})

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        if name != server.model_name:
            raise HTTPError(404, f"The model `{name}` does not exist on this server; it serves "
                            f"`{server.model_name}`.", code="model_not_found", param="model")
        return JSONResponse(_model_card(server))

    async def chat(request: Request) -> Response:
        return await _complete(server, request, parse_chat)

    async def completions(request: Request) -> Response:
        return await _complete(server, request, parse_completion)

    routes = [Route("/health", health, methods=["GET"]), Route("/v1/models", models, methods=["GET"]),
              Route("/v1/models/{model:path}", model, methods=["GET"]),
              Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"])]
    paths = ", ".join(r.path for r in routes if "{" not in r.path)

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StarletteHTTPException):  # the router's own 404 / 405
            if exc.status_code == 405:
                allowed = exc.headers.get("Allow", "") if exc.headers else ""
                exc = HTTPError(405, f"{request.method} is not allowed on {request.url.path}; use "
                                f"{allowed}.", code="method_not_allowed", headers={"Allow": allowed})
            else:
                exc = HTTPError(404, f"No endpoint at {request.url.path}; this server has {paths}.",
                                code="not_found")
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("request failed", exc_info=exc)
        return JSONResponse(HTTPError(500, "Internal server error; see the server log.",
                                      "server_error").body(), 500)

    app = Starlette(routes=routes, exception_handlers={HTTPError: http_error,
                                                       StarletteHTTPException: http_error,
                                                       Exception: crashed})
    return _Auth(app, server)


class _Auth:
    """ASGI middleware: every path but /health needs `Authorization: Bearer KEY` when a key is set."""

    def __init__(self, app: Any, server: Any):
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        key = self.server.api_key
        if scope["type"] != "http" or key is None or scope["path"].rstrip("/") == "/health":
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return await self.app(scope, receive, send)
        error = HTTPError(401, "Missing or wrong API key: send `Authorization: Bearer KEY` with the key "
                          "the server was started with (--api-key-env/--api-key-file).",
                          "authentication_error", "invalid_api_key")
        await JSONResponse(error.body(), 401, headers={"Connection": "close"})(scope, receive, send)


def _model_card(server: Any) -> dict[str, Any]:
    return {"id": server.model_name, "object": "model", "created": 0, "owned_by": "distill"}


async def _body(server: Any, request: Request) -> bytes:
    """The request body, refused (413) as soon as it passes the server's size limit."""
    limit = server.limits.max_request_bytes
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise HTTPError(400, f"Content-Length {length!r} is not a byte count.")
    too_large = HTTPError(413, f"The body is over {limit} bytes, this server's limit (restart it with "
                          "a larger --max-request-bytes).", code="request_too_large",
                          headers={"Connection": "close"})
    if length is not None and int(length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def _complete(server: Any, request: Request, parse: Any) -> Response:
    req: GenRequest = parse(await _body(server, request), server)
    if server.stopping:
        raise shutting_down()
    if req.stream:
        return StreamingResponse(_sse(server, req), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    task = asyncio.ensure_future(_collect(server, req))
    gone = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():  # the client left: cancelling the task aborts its jobs
        task.cancel()
        return Response(status_code=499)
    gone.cancel()
    return JSONResponse(task.result())


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _choices(server: Any, req: GenRequest) -> AsyncIterator[tuple[int, str] | _Done]:
    """(choice, text piece) as tokens come, then a `_Done` per choice; the jobs are aborted on exit."""
    from distill.models.generation import GeneratorClosed

    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    texts = [ChoiceText(server.tokenizer, req.stop) for _ in req.params]
    jobs = []
    try:
        for c, params in enumerate(req.params):
            job = server.engine.submit(req.prompt_of(c), params, lambda t, c=c: loop.call_soon_threadsafe(
                events.put_nowait, (c, t)))
            job.add_done_callback(lambda _, c=c: loop.call_soon_threadsafe(events.put_nowait, (c, None)))
            jobs.append(job)
        pending = len(jobs)
        while pending:
            c, token = await events.get()
            if token is not None:
                piece = texts[c].push(token)
                if texts[c].stopped:
                    jobs[c].abort()
                if piece:
                    yield c, piece
                continue
            pending -= 1
            g = _result(jobs[c])
            piece = texts[c].finish(g.token_ids)
            yield _Done(c, piece, "stop" if texts[c].stopped else g.finish_reason, g)
    except GeneratorClosed:
        raise shutting_down() from None
    finally:
        for job in jobs:
            job.abort()


def _result(job: Any) -> Any:
    from distill.models.generation import GeneratorClosed

    try:
        return job.result()
    except GeneratorClosed:
        raise shutting_down() from None
    except Exception as exc:
        log.error("generation failed: %s: %s", type(exc).__name__, exc)
        raise HTTPError(500, f"Generation failed ({type(exc).__name__}: {exc}).", "server_error") from None


async def _collect(server: Any, req: GenRequest) -> dict[str, Any]:
    """The whole (non-streamed) response body: each choice decoded at once, cut before a stop sequence
    (after its echoed prompt, with the prompt's log-probs, for `echo`)."""
    from distill.models.generation import Generated

    done = {}
    if any(p.max_new_tokens for p in req.params):
        async for event in _choices(server, req):
            if isinstance(event, _Done):
                done[event.choice] = event
    nothing = {c: _Done(c, "", "length", Generated([], "length", len(req.prompt_of(c))))
               for c in range(len(req.params)) if c not in done}  # max_tokens 0: the prompt only
    done |= nothing
    scored = [await asyncio.wrap_future(server.engine.score(p, req.top_logprobs)) for p in req.prompts] \
        if req.echo and req.logprobs else None
    cut = ChoiceText(server.tokenizer, req.stop)
    choices = []
    for c in range(len(req.params)):
        d = done[c]
        text = cut.whole(d.generated.token_ids)
        if req.kind == "chat":
            logprobs = chat_logprobs(server.tokenizer, d.generated, req.top_logprobs) if req.logprobs else None
            choices.append({"index": c, "message": {"role": "assistant", "content": text},
                            "logprobs": logprobs, "finish_reason": d.finish_reason})
        else:
            logprobs = text_logprobs(server.tokenizer, d.generated, req.top_logprobs, req.token_ids) \
                if req.logprobs else None
            if req.echo:
                prompt = req.prompt_of(c)
                text = server.tokenizer.decode(prompt, skip_special_tokens=True) + text
                if scored is not None:
                    logprobs = echoed_logprobs(server.tokenizer, prompt, scored[c // req.n], logprobs,
                                               req.top_logprobs, req.token_ids)
            choices.append({"index": c, "text": text, "logprobs": logprobs, "finish_reason": d.finish_reason})
    tokens = sum(len(d.generated.token_ids) for d in done.values())
    return {**response_head(server, req), "choices": choices, "usage": usage(req, tokens)}


async def _sse(server: Any, req: GenRequest) -> AsyncIterator[bytes]:
    """Server-Sent Events: (for chat) a role chunk per choice, text pieces as they come, [DONE]."""
    head = response_head(server, req, chunk=True)

    def chunk(c: int, piece: str | None, finish: str | None = None) -> bytes:
        if req.kind == "chat":
            delta = {"role": "assistant", "content": ""} if piece is None else \
                ({"content": piece} if piece else {})
            choice = {"index": c, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": c, "text": piece or "", "logprobs": None, "finish_reason": finish}
        return _event({**head, "choices": [choice]})

    if req.kind == "chat":
        for c in range(len(req.params)):
            yield chunk(c, None)
    tokens = 0
    try:
        async for event in _choices(server, req):
            if isinstance(event, _Done):
                tokens += len(event.generated.token_ids)
                yield chunk(event.choice, event.piece, event.finish_reason)
            else:
                yield chunk(*event)
    except HTTPError as exc:  # the headers are gone: the error is the stream's last event
        yield _event(exc.body())
        return
    if req.include_usage:
        yield _event({**head, "choices": [], "usage": usage(req, tokens)})
    yield b"data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
