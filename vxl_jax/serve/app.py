"""The ASGI app (FastAPI): OpenAI's chat protocol for video questions over a :class:`Scheduler`.

    app = create_app(vx, scheduler, Settings(model_name="vxl-tiny", media_root="/data/videos"))

Routes: ``POST /v1/chat/completions`` (JSON or server-sent events), ``GET /v1/models``, ``POST /v1/files`` (a
multipart video upload -> an id usable as a ``video_url``), ``GET /health``, ``GET /metrics`` (Prometheus).
Every refusal is OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``: 400 a bad body, 401
a wrong or missing API key (``/v1/*``), 403 a video outside the media root, 404 an unknown model, 413 an upload
over the limit, 429 a full queue (with Retry-After), 503 shutting down, 504 a timeout. One log line per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import tempfile
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from vxl_jax.serve.chat import ApiError, parse_json
from vxl_jax.serve.completions import Context, build_request, collect, completion, first_events, sse_events, submit
from vxl_jax.serve.fields import parse_chat
from vxl_jax.serve.media import MediaRoot
from vxl_jax.serve.metrics import Metrics
from vxl_jax.serve.uploads import Uploads

log = logging.getLogger("vxl_jax.serve")
MULTIPART_SLACK = 64 << 10  # bytes of multipart framing allowed over the upload limit in Content-Length
MAX_JSON_BYTES = 8 << 20  # the largest chat request body (videos come as paths or upload ids, not inline)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The server's settings (``python -m vxl_jax.serve`` flags). ``api_key`` None: no key asked;
    ``media_root`` None: no local paths, only uploads; ``upload_dir`` None: a temporary folder."""

    model_name: str
    api_key: str | None = None
    media_root: str | None = None
    upload_dir: str | None = None
    max_upload_bytes: int = 2 << 30
    max_uploads_bytes: int | None = 32 << 30  # all uploads together: the oldest are removed past it
    timeout_s: float | None = 600.0
    retry_after_s: int = 1
    grace_s: float = 10.0


def create_app(vx, scheduler, settings: Settings, manage_scheduler: bool = True) -> FastAPI:
    """The app over ``scheduler`` (a started-on-startup ``Scheduler`` when ``manage_scheduler``: the app's
    lifespan starts it and stops it with ``settings.grace_s``)."""
    upload_dir = settings.upload_dir or tempfile.mkdtemp(prefix="vxl_uploads_")
    uploads = Uploads(upload_dir, settings.max_upload_bytes, settings.max_uploads_bytes)
    ctx = Context(vx, scheduler, MediaRoot(settings.media_root, uploads), settings.model_name, settings.timeout_s,
                  settings.retry_after_s)
    metrics = Metrics(scheduler.snapshot)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if manage_scheduler:
            scheduler.start()
        yield
        if manage_scheduler:
            await asyncio.to_thread(scheduler.stop, settings.grace_s)

    app = FastAPI(title="vxl-jax", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx, app.state.metrics, app.state.uploads = ctx, metrics, uploads
    _routes(app, ctx, metrics, uploads)
    _error_handlers(app)
    app.add_middleware(RequestLog, api_key=settings.api_key, metrics=metrics)
    return app


def _routes(app: FastAPI, ctx: Context, metrics: Metrics, uploads: Uploads) -> None:
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": ctx.model_name}

    @app.get("/metrics")
    async def prometheus():
        body, kind = metrics.render()
        return Response(body, media_type=kind)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": ctx.model_name, "object": "model", "created": 0,
                                            "owned_by": "vxl-jax",
                                            "max_model_len": ctx.vx.cfg.lm.max_position_embeddings}]}

    @app.post("/v1/files")
    async def upload(request: Request):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > uploads.max_bytes + MULTIPART_SLACK:
            raise ApiError(413, f"the upload is over the server's limit of {uploads.max_bytes} bytes",
                           code="file_too_large", param="file")
        info = await uploads.save(request.stream(), request.headers.get("content-type"))
        request.scope["vxl_log"].update(upload=info["id"], bytes=info["bytes"])
        return info

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _chat(request, ctx, metrics)


async def _chat(request: Request, ctx: Context, metrics: Metrics):
    """One chat completion: checked, submitted, answered as JSON or as server-sent events. The request's row is
    cancelled when the client goes away (or the answer is not needed any more)."""
    chat = parse_chat(parse_json(await _body(request, MAX_JSON_BYTES)))
    job = build_request(chat, ctx)
    info = request.scope["vxl_log"]
    info.update(id=job.id, video=os.path.basename(job.video.path) if job.video else "-")
    stream = submit(ctx, job)
    watcher = asyncio.ensure_future(_cancel_on_disconnect(request, stream, info))
    done = lambda last=None: _finished(stream, watcher, last, info, metrics)  # noqa: E731
    try:
        head = await first_events(stream)
        if chat.stream:
            record: dict = {}
            events = sse_events(job.id, ctx.model_name, head, stream, chat.include_usage, chat.return_token_ids,
                                record)
            return StreamingResponse(_guarded(events, lambda: done(record.get("last"))),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": job.id})
        events, last = await collect(head, stream)
        done(last)
        return JSONResponse(completion(job.id, ctx.model_name, events, last, chat.return_token_ids))
    except BaseException:
        done()
        raise


async def _body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is over ``limit`` bytes."""
    size, parts = 0, []
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes", code="request_too_large")
        parts.append(part)
    return b"".join(parts)


async def _guarded(events, done):
    """The SSE events; whatever ends them (the last event, a disconnect, a cancelled task) frees the row."""
    try:
        async for event in events:
            yield event
    finally:
        done()


async def _cancel_on_disconnect(request: Request, stream, info: dict) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            if not stream.ended:
                info["disconnected"] = True
                stream.cancel()
            return


def _finished(stream, watcher, last, info: dict, metrics: Metrics) -> None:
    """A request is over: stop watching, cancel its row if it still runs, record its timings and usage."""
    if info.get("finished"):
        return
    info["finished"] = True
    watcher.cancel()
    if not stream.ended:
        stream.cancel()
    times, per_token = list(stream.token_times), list(stream.per_token_s)
    # per-token latency: between tokens, after the first hand-over (whose wait is the time to first token)
    metrics.observe_tokens(stream.ttft_s, [s for t, s in zip(times, per_token) if t > times[0]])
    info.update(tokens=len(stream.token_times), ttft=f"{stream.ttft_s:.3f}s" if stream.ttft_s is not None else "-")
    if last is not None and last.usage:
        info.update(prompt=last.usage.get("prompt_tokens"), cached=last.usage.get("cached_tokens"))
    if last is not None:
        info["finish"] = last.finish_reason


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(e.status_code, str(e.detail), kind).body(), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, e: RequestValidationError):
        return JSONResponse(ApiError(400, f"bad request: {e.errors()[:1]}").body(), status_code=400)


class RequestLog:
    """ASGI middleware: the API key on ``/v1/*`` (401 without it), then one log line per request (method, path,
    status, seconds and what the handler noted: id, video, tokens, time to first token, finish reason)."""

    def __init__(self, app, api_key: str | None, metrics: Metrics):
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, info, status = time.perf_counter(), {}, [500]
        scope["vxl_log"] = info

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.api_key is not None and scope["path"].startswith("/v1/") and not self._authorized(scope):
                body = ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                code="invalid_api_key").body()
                return await JSONResponse(body, 401, {"WWW-Authenticate": "Bearer"})(scope, receive, send_status)
            await self.app(scope, receive, send_status)
        finally:
            if scope["path"] == "/v1/chat/completions":
                self.metrics.observe_request(status[0])
            notes = " ".join(f"{k}={v}" for k, v in info.items() if k != "finished")
            log.info("%s %s %d %.3fs %s", scope["method"], scope["path"], status[0], time.perf_counter() - t0, notes)

    def _authorized(self, scope) -> bool:
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())
