"""The FastAPI application of ``medvl serve``: OpenAI-compatible chat completions for 2D and 3D models.

Routes: ``POST /v1/chat/completions`` (JSON or Server-Sent Events), ``GET /v1/models``, ``GET /health``
(503 until the model is loaded), ``GET /metrics`` (Prometheus text). Every error is answered in
OpenAI's format ``{"error": {"message", "type", "param", "code"}}``; bad input is a 4xx and never
reaches the worker thread as an unhandled exception.

Privacy: INFO logs carry request ids, media counts, token counts and timings only -- never prompt
text, answers, media bytes or DICOM header values.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from medvl.data.records import Record
from medvl.inference import Generation
from medvl.serve.media import MediaDecoder, MediaLimits
from medvl.serve.metrics import ServerMetrics
from medvl.serve.scheduler import Job, SamplingSettings, Scheduler
from medvl.serve.schema import APIError, ChatRequest, bad_request, parse_chat_request

if TYPE_CHECKING:
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

logger = logging.getLogger(__name__)

PUBLIC_PATHS = {"/health"}  # reachable without the API key (load balancers, readiness probes)
# Mounts a web page (an ASGI app) on the server app at a URL path: (app, path) -> None.
UIMount = Callable[[FastAPI, str], None]


@dataclass
class ServeConfig:
    """Settings of one server (the ``medvl serve`` options).

    Args:
        model_name: the name ``/v1/models`` lists and requests may give as ``model``.
        media_roots: folders ``file://`` URLs may read (none: ``file://`` refused).
        max_batch_size: requests generated together.
        batch_wait_ms: how long the scheduler waits for batch mates after the first request.
        api_key: required bearer token for every route but ``/health`` (None: open).
        max_request_mb: largest accepted request body.
        max_image_pixels: largest image (width x height x frames).
        max_volume_voxels: largest volume (stored voxels).
        max_media: images + volumes per request.
        default_max_tokens: completion limit when a request gives none (capped by the context).
    """

    model_name: str = "medvl"
    media_roots: list[str] = field(default_factory=list)
    max_batch_size: int = 8
    batch_wait_ms: float = 0.0
    api_key: str | None = None
    max_request_mb: float = 64.0
    max_image_pixels: int = 64_000_000
    max_volume_voxels: int = 256 * 1024 * 1024
    max_media: int = 8
    default_max_tokens: int = 512


class ServerState:
    """The model, its scheduler and readiness, shared by the routes."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.model: MedVLForConditionalGeneration | None = None
        self.processor: MedVLProcessor | None = None
        self.scheduler: Scheduler | None = None
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self.max_positions: int | None = None
        # The worker thread owns the processor; request threads count prompt tokens with their own copy
        # (fast tokenizers are not safe to share across threads that change padding settings).
        self.front: MedVLProcessor | None = None
        self.front_lock = threading.Lock()
        self.public_paths = set(PUBLIC_PATHS)  # no bearer token needed (create_app's ui adds a page's paths)
        self.public_prefixes: list[str] = []
        self.decoder = MediaDecoder(
            config.media_roots, MediaLimits(config.max_image_pixels, config.max_volume_voxels, config.max_media)
        )
        self.metrics = ServerMetrics(
            queue_length=lambda: self.scheduler.queue_length if self.scheduler else 0,
            running=lambda: self.scheduler.running if self.scheduler else 0,
        )

    def attach(self, model: MedVLForConditionalGeneration, processor: MedVLProcessor) -> None:
        """Install a loaded model: start the scheduler and become ready.

        Args:
            model: ``MedVLForConditionalGeneration`` in eval mode.
            processor: its ``MedVLProcessor``.
        """
        self.model, self.processor = model, processor
        self.front = copy.deepcopy(processor)
        self.max_positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        self.scheduler = Scheduler(
            model,
            processor,
            max_batch_size=self.config.max_batch_size,
            batch_wait_s=self.config.batch_wait_ms / 1000.0,
            on_batch=self.metrics.batch_size.observe,
        )
        self.metrics.ready.set(1)
        self.ready.set()

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the rendered prompt with media placeholders expanded (as the processor tokenises it).

        Args:
            messages: the conversation (string content with markers).
        """
        front = self.front
        if front is None:  # routes reach here only once ready (attach() sets it)
            raise RuntimeError("no model attached")
        with self.front_lock:
            text = front.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            if not isinstance(text, str):  # one conversation, tokenize=False: one string
                raise TypeError(f"the chat template rendered {type(text).__name__}, not a string")
            try:
                expanded = front.expand_text(text)
            except ValueError as err:  # e.g. a volume sent to a model without a volume encoder
                raise bad_request(
                    str(err).replace("text row 0 has", "the request has"), "messages", "unsupported_media"
                ) from None
            return len(front.tokenizer(expanded)["input_ids"])


def create_app(
    config: ServeConfig,
    *,
    loader: Callable[[], tuple[MedVLForConditionalGeneration, MedVLProcessor]] | None = None,
    loaded: tuple[MedVLForConditionalGeneration, MedVLProcessor] | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
    ui: UIMount | None = None,
    ui_path: str = "/ui",
) -> FastAPI:
    """Build the FastAPI app.

    Args:
        config: server settings.
        loader: called on a background thread at start-up to load ``(model, processor)``; ``/health``
            answers 503 until it returns.
        loaded: an already loaded ``(model, processor)`` (instead of ``loader``).
        on_load_error: called if ``loader`` fails (the CLI stops the server).
        ui: mounts a web page on the app at ``ui_path`` (``medvl serve --ui`` passes the Gradio demo's).
            A browser cannot send the bearer header, so the page's paths skip the API-key check: with
            an API key, the page must ask for a login itself.
        ui_path: URL path of the page.
    """
    if (loader is None) == (loaded is None):
        raise ValueError("create_app needs exactly one of loader= or loaded=")
    state = ServerState(config)
    if loaded is not None:
        state.attach(*loaded)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if loader is not None:

            def load() -> None:
                try:
                    started = time.monotonic()
                    state.attach(*loader())
                    logger.info("model %s loaded in %.1f s; ready", config.model_name, time.monotonic() - started)
                except BaseException as err:
                    state.load_error = err
                    logger.error("loading the model failed: %s: %s", type(err).__name__, err)
                    if on_load_error is not None:
                        on_load_error(err)

            threading.Thread(target=load, name="medvl-serve-load", daemon=True).start()
        yield
        if state.scheduler is not None:
            state.scheduler.close()

    app = FastAPI(title="medvl serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.medvl = state

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def api_error(_request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(err.status_code, str(err.detail), type=kind).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(_request: Request, err: Exception) -> JSONResponse:
        # Only the exception type at INFO+: its message might quote request content.
        logger.error("internal error: %s", type(err).__name__)
        logger.debug("internal error details", exc_info=err)
        return JSONResponse(APIError(500, "internal server error", type="server_error").body(), status_code=500)

    # ------------------------------------------------------------------ auth
    if config.api_key:
        app.add_middleware(BearerAuth, api_key=config.api_key, state=state)

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> JSONResponse:
        if state.ready.is_set():
            return JSONResponse({"status": "ok", "model": config.model_name})
        status = "error" if state.load_error is not None else "loading"
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "medvl"}],
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        started = time.monotonic()
        try:
            response = await _chat(request, state, started)
        except APIError as err:
            state.metrics.requests.labels("chat_completions", str(err.status)).inc()
            logger.info("request refused: %d %s (%s)", err.status, err.code, err.param)
            raise
        except Exception as err:  # a bug, not bad input: a 500 whose log line quotes no request content
            state.metrics.requests.labels("chat_completions", "500").inc()
            logger.error("internal error: %s", type(err).__name__)
            logger.debug("internal error details", exc_info=err)
            raise APIError(500, "internal server error", type="server_error") from None
        return response

    if ui is not None:
        state.public_paths.add(ui_path.rstrip("/"))
        state.public_prefixes.append(ui_path.rstrip("/") + "/")
        ui(app, ui_path)
    return app


class BearerAuth:
    """Pure ASGI middleware: every path but ``/health`` needs ``Authorization: Bearer <api key>``.

    (A plain ASGI wrapper rather than ``@app.middleware``: it leaves streamed responses and their
    client-disconnect signal untouched.)

    Args:
        app: the wrapped ASGI app.
        api_key: the expected token.
        state: the server state (its ``public_paths`` / ``public_prefixes`` need no token).
    """

    def __init__(self, app: ASGIApp, api_key: str, state: ServerState):
        self.app = app
        self.api_key = api_key.encode()
        self.state = state

    def _public(self, path: str) -> bool:
        return path in self.state.public_paths or any(path.startswith(p) for p in self.state.public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not self._public(scope["path"]):
            await send({"type": "websocket.close", "code": 1008})  # no route uses websockets behind the key
            return
        if scope["type"] == "http" and not self._public(scope["path"]):
            headers = dict(scope.get("headers") or [])
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode("latin-1"), self.api_key):
                err = APIError(
                    401,
                    "missing or invalid API key: send 'Authorization: Bearer <key>'",
                    type="authentication_error",
                    code="invalid_api_key",
                )
                response = JSONResponse(err.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------- chat completions


async def _read_body(request: Request, limit_mb: float) -> bytes:
    limit = int(limit_mb * 1024 * 1024)
    too_large = APIError(
        413,
        f"the request body is larger than this server's limit of {limit_mb:g} MB (--max-request-mb)",
        code="request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _prepare(state: ServerState, req: ChatRequest, request_id: str) -> tuple[Record, int, int]:
    """Decode media, build the record, check the context: (record, prompt tokens, max tokens). Runs in a thread."""
    proc = state.front
    kinds = {m.kind for m in req.media}
    if "image" in kinds and not getattr(proc, "num_image_tokens", 0):
        raise bad_request(
            "this model has no 2D image encoder; it cannot take image_url parts", "messages", "unsupported_media"
        )
    if "volume" in kinds and not getattr(proc, "num_volume_tokens", 0):
        raise bad_request(
            "this model has no volume encoder; it cannot take volume_url parts", "messages", "unsupported_media"
        )
    prompt_tokens = state.count_prompt_tokens(req.messages)
    limit = state.max_positions
    if limit is not None:
        room = limit - prompt_tokens
        if room < 1:
            raise bad_request(
                f"the prompt is {prompt_tokens} tokens (media placeholders included); this model "
                f"reads at most {limit} positions",
                "messages",
                "context_length_exceeded",
            )
        if req.max_tokens is not None and req.max_tokens > room:
            raise bad_request(
                f"'{req.max_tokens_param}' = {req.max_tokens} is over this model's limit: the prompt "
                f"uses {prompt_tokens} of its {limit} positions, {room} remain",
                req.max_tokens_param,
                "context_length_exceeded",
            )
        max_tokens = req.max_tokens or min(state.config.default_max_tokens, room)
    else:
        max_tokens = req.max_tokens or state.config.default_max_tokens
    images, volumes = state.decoder.decode(req.media)
    record = Record(id=request_id, messages=req.messages, images=list(images), volumes=list(volumes))
    return record, prompt_tokens, max_tokens


@dataclass(frozen=True)
class _Delta:
    """A piece of the answer (streamed requests)."""

    text: str


@dataclass(frozen=True)
class _Done:
    """The whole answer with its token accounting."""

    text: str
    generation: Generation


@dataclass(frozen=True)
class _Failed:
    """Generation raised."""

    error: BaseException


# What the scheduler's worker thread posts to the request's event loop.
JobEvent = _Delta | _Done | _Failed


async def _chat(request: Request, state: ServerState, started: float) -> Response:
    req = await _read_request(request, state)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    record, prompt_tokens, max_tokens = await run_in_threadpool(_prepare, state, req, request_id)
    logger.info(
        "%s: %d image(s), %d volume(s), %d prompt tokens, max_tokens %d, %s%s",
        request_id,
        len(record.images),
        len(record.volumes),
        prompt_tokens,
        max_tokens,
        "sampling" if req.do_sample else "greedy",
        ", stream" if req.stream else "",
    )
    events: asyncio.Queue[JobEvent] = asyncio.Queue()
    job = _submit(state, req, record, max_tokens, request_id, events)
    created = int(time.time())
    if req.stream:
        return StreamingResponse(
            _stream(state, req, job, events, request_id, created, started),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    return await _answer(request, state, job, events, request_id, created, started)


async def _read_request(request: Request, state: ServerState) -> ChatRequest:
    """The validated request: the model must be ready, the body valid JSON naming this server's model."""
    config = state.config
    if not state.ready.is_set():
        raise APIError(
            503,
            "the model is still loading; retry when GET /health answers 200",
            type="service_unavailable_error",
            code="model_loading",
        )
    body = await _read_body(request, config.max_request_mb)
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON: {err}", None, "invalid_json") from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply", None, "invalid_json") from None
    req = parse_chat_request(payload)
    if req.model is not None and req.model != config.model_name:
        raise APIError(
            404,
            f"the model {req.model!r} does not exist; this server serves {config.model_name!r}",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )
    return req


def _submit(
    state: ServerState,
    req: ChatRequest,
    record: Record,
    max_tokens: int,
    request_id: str,
    events: asyncio.Queue[JobEvent],
) -> Job:
    """Queue the record on the scheduler; its deltas, answer or error arrive on ``events``."""
    loop = asyncio.get_running_loop()

    def post(event: JobEvent) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop is closed (server shutting down)
            pass

    def on_done(text: str, gen: Generation) -> None:
        if job.cancelled.is_set():  # nobody is listening; count what the early stop saved
            state.metrics.cancelled.inc()
            state.metrics.cancelled_tokens.inc(gen.completion_tokens)
            logger.info("%s: cancelled after %d completion tokens", request_id, gen.completion_tokens)
        post(_Done(text, gen))

    job = Job(
        record=record,
        max_tokens=max_tokens,
        settings=SamplingSettings(
            req.do_sample,
            req.temperature if req.do_sample else None,
            req.top_p if req.do_sample else None,
            req.seed if req.do_sample else None,
        ),
        stop=req.stop,
        on_delta=lambda d: post(_Delta(d)),
        on_done=lambda text, gen: on_done(text, gen),
        on_error=lambda err: post(_Failed(err)),
    )
    if state.scheduler is None:  # ready is set only after attach() started the scheduler
        raise RuntimeError("the server is ready but has no scheduler")
    state.scheduler.submit(job)
    return job


async def _answer(
    request: Request,
    state: ServerState,
    job: Job,
    events: asyncio.Queue[JobEvent],
    request_id: str,
    created: int,
    started: float,
) -> Response:
    """The non-streamed answer: wait for the job (cancelling it if the client goes away)."""
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), timeout=1.0)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    logger.info("%s: client disconnected", request_id)
                    return Response(status_code=499)
                continue
            if isinstance(event, _Done):
                break
            if isinstance(event, _Failed):
                raise _as_api_error(event.error)
    except asyncio.CancelledError:
        job.cancel()
        raise
    gen = event.generation
    _account(state, request_id, gen, started)
    return JSONResponse(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": state.config.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": event.text},
                    "finish_reason": _finish(gen),
                    "logprobs": None,
                }
            ],
            "usage": _usage(gen),
        }
    )


def _finish(gen: Generation) -> str:
    return "length" if gen.finish_reason == "length" else "stop"


def _usage(gen: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def _account(state: ServerState, request_id: str, gen: Generation, started: float) -> None:
    elapsed = time.monotonic() - started
    m = state.metrics
    m.requests.labels("chat_completions", "200").inc()
    m.prompt_tokens.inc(gen.prompt_tokens)
    m.completion_tokens.inc(gen.completion_tokens)
    m.latency.observe(elapsed)
    logger.info(
        "%s: done, %d completion tokens, finish %s, %.2f s", request_id, gen.completion_tokens, _finish(gen), elapsed
    )


def _as_api_error(err: BaseException) -> APIError:
    if isinstance(err, APIError):
        return err
    from medvl.errors import MedVLDataError

    if isinstance(err, (MedVLDataError, ValueError)):
        return bad_request(f"the input could not be processed: {err}", "messages", "invalid_input")
    logger.error("generation failed: %s", type(err).__name__)
    return APIError(500, "generation failed (internal error)", type="server_error", code="generation_failed")


async def _stream(
    state: ServerState,
    req: ChatRequest,
    job: Job,
    events: asyncio.Queue[JobEvent],
    request_id: str,
    created: int,
    started: float,
) -> AsyncIterator[bytes]:
    """Server-Sent Events: role chunk, content deltas, finish chunk, optional usage chunk, ``[DONE]``."""
    name = state.config.model_name

    def chunk(
        delta: dict[str, str], finish: str | None = None, usage: dict[str, int] | None = None, choices: bool = True
    ) -> bytes:
        data: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if choices else [],
        }
        if req.include_usage:
            data["usage"] = usage
        return f"data: {json.dumps(data)}\n\n".encode()

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        first = True
        while True:
            event = await events.get()
            if isinstance(event, _Delta):
                if first:
                    state.metrics.first_token.observe(time.monotonic() - started)
                    first = False
                yield chunk({"content": event.text})
            elif isinstance(event, _Done):
                gen = event.generation
                _account(state, request_id, gen, started)
                yield chunk({}, _finish(gen))
                if req.include_usage:
                    yield chunk({}, usage=_usage(gen), choices=False)
                break
            else:
                err = _as_api_error(event.error)
                state.metrics.requests.labels("chat_completions", str(err.status)).inc()
                yield f"data: {json.dumps(err.body())}\n\n".encode()
                break
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        if not finished:  # the client went away mid-stream: free its batch row
            job.cancel()
            logger.info("%s: client disconnected mid-stream", request_id)


def model_name_of(path: str | os.PathLike) -> str:
    """The served model name of a checkpoint folder: its folder name.

    Args:
        path: checkpoint folder.
    """
    return Path(path).resolve().name


__all__ = ["ServeConfig", "UIMount", "create_app", "model_name_of"]
