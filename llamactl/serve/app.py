"""The Starlette application: OpenAI's routes mapped onto the engine's slots.

Each request is parsed into a pydantic model, rendered with the model's own chat template
(tools included), tokenized, checked against a slot's context (never truncated), and handed
to the model's scheduler as a Job; pieces come back through an asyncio queue. A gate in front
of every route checks the API key, refuses bodies over the limit, and writes one access-log
line per request (method, path, status, tokens, milliseconds; never the prompt unless
verbose).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llamactl.engine.batch import Job
from llamactl.engine import Piece, Sampling, Stats
from llamactl.errors import LlamactlError
from llamactl.serve import errors, schema, tools
from llamactl.serve.auth import authorized
from llamactl.serve.scheduler import QueueFull, Scheduler


@dataclass
class ServedModel:
    name: str                      # what /v1/models lists
    aliases: set[str]              # other names a request may use (the reference it was started with)
    engine: Any = None
    draft: Any = None              # its draft model's Engine (--draft), used by the scheduler's slots
    scheduler: Scheduler | None = None
    slot_ctx: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    allow_file_images: bool = False   # image_url parts may name local files (--allow-file-images)


@dataclass
class ServerState:
    models: list[ServedModel]
    api_key: str | None = None
    max_body: int = 8 << 20
    verbose: bool = False
    log: Callable[[str], None] = lambda line: None
    status: str = "loading"        # loading | ready | failed

    def find(self, name: str) -> ServedModel:
        for model in self.models:
            if name == model.name or name in model.aliases:
                return model
        raise errors.model_not_found(name, [m.name for m in self.models])


def _error(exc: errors.APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


# -- the gate: key, body size, access log ----------------------------------------------------


class Gate:
    """ASGI middleware in front of every route."""

    def __init__(self, app: Any, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 0}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refuse(scope)
            if refusal is not None:
                await _error(refusal)(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            usage = scope.get("llamactl.usage")
            tokens = f" prompt={usage[0]} completion={usage[1]}" if usage else ""
            note = f" {scope['llamactl.note']}" if scope.get("llamactl.note") else ""
            ms = (time.perf_counter() - started) * 1000
            self.state.log(f"{scope.get('method')} {scope.get('path')} {status['code'] or 499}{tokens} "
                           f"{ms:.0f}ms{note}")

    def _refuse(self, scope: dict) -> errors.APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.state.api_key and scope.get("path") != "/health":
            if not authorized(headers.get("authorization"), self.state.api_key):
                return errors.unauthorized()
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.state.max_body:
            return errors.too_large(self.state.max_body)
        return None


async def _body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# -- requests to jobs ------------------------------------------------------------------------


def _sampling(req: schema._Sampled, limit: int | None, grammar: str | None) -> Sampling:
    base = Sampling()
    return Sampling(
        temperature=base.temperature if req.temperature is None else req.temperature,
        top_p=base.top_p if req.top_p is None else req.top_p,
        top_k=base.top_k if req.top_k is None else req.top_k,
        min_p=base.min_p if req.min_p is None else req.min_p,
        repeat_penalty=base.repeat_penalty if req.repeat_penalty is None else req.repeat_penalty,
        seed=req.seed, max_tokens=limit, grammar=grammar,
    )


def _image(url: str, *, allow_files: bool, where: str):
    """An image_url's image: a data: URL (base64), or a local path / file: URL when the
    server was started with --allow-file-images. A 400 naming the message otherwise."""
    import base64
    import binascii

    from llamactl import images

    try:
        if url.startswith("data:"):
            head, _, payload = url.partition(",")
            if ";base64" not in head or not payload:
                raise errors.bad_request(f"{where}: a data: URL must be base64 (data:image/png;base64,...)",
                                         param="messages")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise errors.bad_request(f"{where}: the data: URL is not valid base64", param="messages") from None
            return images.read_image_bytes(data, f"{where} (data: URL)")
        if url.startswith(("http://", "https://")):
            raise errors.bad_request(f"{where}: the server does not fetch remote images; send a data: URL",
                                     param="messages")
        if not allow_files:
            raise errors.bad_request(f"{where}: local image files need a server started with "
                                     "--allow-file-images; send a data: URL", param="messages")
        return images.read_image(url.removeprefix("file://"))
    except LlamactlError as exc:
        if isinstance(exc, errors.APIError):
            raise
        raise errors.bad_request(f"{where}: {exc.message}", param="messages") from None


def _template_messages(req: schema.ChatRequest, served: Any = None) -> list[dict[str, Any]]:
    """The messages as chat templates take them (tool-call arguments as objects; images,
    decoded, beside the text of the message they came in)."""
    out = []
    for i, m in enumerate(req.messages):
        msg: dict[str, Any] = {"role": m.role, "content": m.text()}
        urls = m.image_urls()
        if urls:
            if served is None or served.engine is None or served.engine.images is None:
                name = served.name if served is not None else "this model"
                raise errors.bad_request(f"{name} has no vision projector: it cannot read images",
                                         param="messages")
            if m.role != "user":
                raise errors.bad_request(f"messages.{i}: images go in user messages", param="messages")
            msg["images"] = [_image(u, allow_files=served.allow_file_images, where=f"messages.{i}")
                             for u in urls]
        if m.name:
            msg["name"] = m.name
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            calls = []
            for call in m.tool_calls:
                args = call.function.arguments
                if isinstance(args, str):
                    try:
                        args = json.loads(args or "{}")
                    except ValueError:
                        raise errors.bad_request(f"messages.{i}.tool_calls: arguments are not JSON",
                                                 param="messages") from None
                calls.append({"id": call.id, "type": "function",
                              "function": {"name": call.function.name, "arguments": args}})
            msg["tool_calls"] = calls
        out.append(msg)
    return out


@dataclass
class _Prepared:
    served: ServedModel
    job: Job
    tool_names: set[str]


def _check_common(req: schema._Sampled) -> None:
    if req.n is not None and req.n != 1:
        raise errors.bad_request("n: only 1 choice per request is supported", param="n")


def _prepare_chat(state: ServerState, req: schema.ChatRequest) -> _Prepared:
    """Runs in a worker thread: rendering and tokenizing take time."""
    _check_common(req)
    served = state.find(req.model)
    engine = served.engine
    tool_list = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice or ("auto" if tool_list else "none")
    names = {t["function"]["name"] for t in tool_list}
    forced: str | None = None
    if isinstance(choice, schema.NamedToolChoice):
        if choice.function.name not in names:
            raise errors.bad_request(f"tool_choice names {choice.function.name!r}, which is not in tools",
                                     param="tool_choice")
        forced = choice.function.name
    elif choice == "required" and not tool_list:
        raise errors.bad_request("tool_choice is 'required' but no tools were given", param="tool_choice")
    if tool_list and not engine.template.takes_tools:
        raise errors.bad_request(f"the chat template of {served.name} does not take tools",
                                 param="tools", code="tools_not_supported")
    grammar = None
    if tool_list and (forced or choice == "required"):
        grammar = tools.grammar_for_schema(tools.forced_schema(tool_list, forced))
    elif req.response_format is not None and req.response_format.type != "text":
        if req.response_format.type == "json_object":
            json_schema: dict[str, Any] = {"type": "object"}
        else:
            if req.response_format.json_schema is None or req.response_format.json_schema.schema_ is None:
                raise errors.bad_request("response_format.json_schema.schema is required",
                                         param="response_format")
            json_schema = req.response_format.json_schema.schema_
        try:
            grammar = tools.grammar_for_schema(json_schema)
        except Exception as exc:
            raise errors.bad_request(f"response_format: cannot turn the schema into a grammar: {exc}",
                                     param="response_format") from None
    try:
        text = engine.render(_template_messages(req, served), tools=tool_list or None)
    except LlamactlError as exc:
        raise errors.bad_request(exc.message, param="messages") from None
    if state.verbose:
        state.log(f"prompt: {text!r}")
    prompt = _tokens(engine, text)
    limit = req.limit()
    evaluated = len(engine.images.expand(prompt)[0]) if engine.images is not None else len(prompt)
    _check_length(evaluated, limit, served.slot_ctx)
    job = Job(prompt=prompt, text=text, sampling=_sampling(req, limit, grammar), emit=lambda item: None,
              stop=req.stops(), special_text=bool(names) and choice != "none", ignore_eos=req.ignore_eos)
    return _Prepared(served, job, names if choice != "none" else set())


def _prepare_completion(state: ServerState, req: schema.CompletionRequest) -> _Prepared:
    _check_common(req)
    served = state.find(req.model)
    prompt = _tokens(served.engine, req.prompt_text())
    _check_length(len(prompt), req.max_tokens, served.slot_ctx)
    job = Job(prompt=prompt, sampling=_sampling(req, req.max_tokens, None), emit=lambda item: None,
              stop=req.stops(), ignore_eos=req.ignore_eos)
    return _Prepared(served, job, set())


def _tokens(engine: Any, text: str) -> list[int]:
    text_bytes = text.encode("utf-8")
    add_bos = engine._add_bos() and not engine._starts_with_bos(text_bytes)
    tokens = engine._tokenize_prompt(text, add_bos=add_bos)   # image markers -> whole images
    if not tokens:
        raise errors.bad_request("the prompt is empty", param="messages")
    return tokens


def _check_length(prompt: int, limit: int | None, slot_ctx: int) -> None:
    if prompt >= slot_ctx:
        raise errors.context_exceeded(prompt, slot_ctx)
    if limit is not None and prompt + limit > slot_ctx:
        raise errors.context_exceeded(prompt, slot_ctx, limit)


def _submit(prep: _Prepared) -> asyncio.Queue:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emit(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:      # the loop is gone (shutdown)
            pass

    prep.job.emit = emit
    assert prep.served.scheduler is not None
    try:
        prep.served.scheduler.submit(prep.job)
    except QueueFull as exc:
        raise errors.busy(str(exc)) from None
    return queue


def _usage(stats: Stats | None) -> schema.Usage:
    p = stats.prompt_tokens if stats else 0
    c = stats.completion_tokens if stats else 0
    cached = (stats.prompt_tokens - stats.prompt_tokens_evaluated) if stats else 0
    details = None
    if stats is not None and stats.draft_tokens:
        details = {"accepted_prediction_tokens": stats.draft_accepted_tokens,
                   "rejected_prediction_tokens": stats.draft_tokens - stats.draft_accepted_tokens}
    return schema.Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c,
                        prompt_tokens_details={"cached_tokens": max(0, cached)},
                        completion_tokens_details=details)


def _finish_reason(stats: Stats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


async def _collect(request: Request, prep: _Prepared, queue: asyncio.Queue) -> tuple[str, Stats]:
    """The whole answer; a client that goes away cancels the job."""
    parts: list[str] = []
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    _gone(request, prep, len(parts))
                    raise asyncio.CancelledError from None
                continue
            if isinstance(item, Piece):
                parts.append(item.text)
            elif isinstance(item, Stats):
                return "".join(parts), item
            elif isinstance(item, Exception):
                raise _as_api_error(item)
    except BaseException:
        _cancel(prep)
        raise


def _gone(request: Request, prep: _Prepared, pieces: int) -> None:
    """The client went away: say so in the access log (tokens sent so far)."""
    request.scope["llamactl.usage"] = (len(prep.job.prompt), pieces)
    request.scope["llamactl.note"] = "disconnected"


def _cancel(prep: _Prepared) -> None:
    prep.job.cancelled = True
    if prep.served.scheduler is not None:
        prep.served.scheduler.wake()


def _as_api_error(exc: Exception) -> errors.APIError:
    if isinstance(exc, errors.APIError):
        return exc
    message = exc.message if isinstance(exc, LlamactlError) else f"{type(exc).__name__}: {exc}"
    return errors.APIError(500, message, type="server_error")


def _message(text: str, prep: _Prepared) -> tuple[schema.OutMessage, bool]:
    calls = tools.parse_calls(text, prep.tool_names) if prep.tool_names else None
    if calls:
        return schema.OutMessage(content=None, tool_calls=[
            schema.OutToolCall(id=c.id, function=schema.OutFunction(
                name=c.name, arguments=json.dumps(c.arguments, ensure_ascii=False)))
            for c in calls]), True
    if prep.job.special_text:
        text = tools.strip_tags(text)
    return schema.OutMessage(content=text), False


def _sse(obj: Any) -> bytes:
    data = obj.model_dump_json(exclude_none=True) if hasattr(obj, "model_dump_json") else json.dumps(obj)
    return f"data: {data}\n\n".encode("utf-8")


# -- routes ----------------------------------------------------------------------------------


def build_app(state: ServerState, cors: list[str] | None = None) -> Any:
    async def health(request: Request) -> Response:
        models = []
        for m in state.models:
            entry: dict[str, Any] = {"id": m.name}
            if m.scheduler is not None:
                entry.update(m.scheduler.status())
            models.append(entry)
        body = {"status": "ok" if state.status == "ready" else state.status, "models": models}
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    def ready() -> None:
        if state.status != "ready":
            raise errors.busy("the models are still loading", retry_after=2)

    async def list_models(request: Request) -> Response:
        data = [schema.ModelCard(id=m.name, created=m.created) for m in state.models]
        return JSONResponse(schema.ModelList(data=data).model_dump())

    async def chat(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        try:
            req = schema.parse(schema.ChatRequest, await _body(request, state.max_body))
            ready()
            prep = await run_in_threadpool(_prepare_chat, state, req)
            queue = _submit(prep)
        except errors.APIError as exc:
            return _error(exc)
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        if not req.stream:
            try:
                text, stats = await _collect(request, prep, queue)
            except errors.APIError as exc:
                return _error(exc)
            request.scope["llamactl.usage"] = (stats.prompt_tokens, stats.completion_tokens)
            message, called = _message(text, prep)
            reason = "tool_calls" if called else _finish_reason(stats)
            body = schema.ChatCompletion(id=cid, created=created, model=prep.served.name,
                                         choices=[schema.Choice(message=message, finish_reason=reason)],
                                         usage=_usage(stats))
            return JSONResponse(body.model_dump(exclude_none=True))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_chat_stream(request, prep, queue, cid, created, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _chat_stream(request: Request, prep: _Prepared, queue: asyncio.Queue, cid: str,
                           created: int, include_usage: bool) -> AsyncIterator[bytes]:
        name = prep.served.name

        def chunk(delta: schema.Delta, reason: str | None = None) -> bytes:
            return _sse(schema.ChatCompletionChunk(id=cid, created=created, model=name,
                                                   choices=[schema.ChunkChoice(delta=delta, finish_reason=reason)]))

        held: list[str] = []          # an answer that may be a tool call is held back
        holding = bool(prep.tool_names)
        done = False
        pieces = 0
        try:
            yield chunk(schema.Delta(role="assistant", content=""))
            while True:
                item = await queue.get()
                if isinstance(item, Piece):
                    pieces += 1
                    if holding:
                        held.append(item.text)
                        if not tools.looks_like_call("".join(held)):
                            holding = False
                            yield chunk(schema.Delta(content="".join(held)))
                            held = []
                    elif item.text:
                        yield chunk(schema.Delta(content=item.text))
                elif isinstance(item, Stats):
                    stats = item
                    break
                elif isinstance(item, Exception):
                    err = _as_api_error(item)
                    yield f"data: {json.dumps(err.body())}\n\n".encode()
                    done = True
                    return
            request.scope["llamactl.usage"] = (stats.prompt_tokens, stats.completion_tokens)
            reason = _finish_reason(stats)
            if held:
                message, called = _message("".join(held), prep)
                if called:
                    calls = [c.model_copy(update={"index": i}) for i, c in enumerate(message.tool_calls or [])]
                    yield chunk(schema.Delta(tool_calls=calls))
                    reason = "tool_calls"
                elif message.content:
                    yield chunk(schema.Delta(content=message.content))
            yield chunk(schema.Delta(), reason)
            if include_usage:
                yield _sse(schema.ChatCompletionChunk(id=cid, created=created, model=name, choices=[],
                                                      usage=_usage(stats)))
            yield b"data: [DONE]\n\n"
            done = True
        finally:
            if not done:
                _gone(request, prep, pieces)
                _cancel(prep)

    async def completions(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        try:
            req = schema.parse(schema.CompletionRequest, await _body(request, state.max_body))
            ready()
            prep = await run_in_threadpool(_prepare_completion, state, req)
            queue = _submit(prep)
        except errors.APIError as exc:
            return _error(exc)
        cid = "cmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        name = prep.served.name
        if not req.stream:
            try:
                text, stats = await _collect(request, prep, queue)
            except errors.APIError as exc:
                return _error(exc)
            request.scope["llamactl.usage"] = (stats.prompt_tokens, stats.completion_tokens)
            body = schema.Completion(id=cid, created=created, model=name, usage=_usage(stats),
                                     choices=[schema.TextChoice(text=text, finish_reason=_finish_reason(stats))])
            return JSONResponse(body.model_dump(exclude_none=True))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream() -> AsyncIterator[bytes]:
            done = False
            pieces = 0
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, Piece):
                        pieces += 1
                        if item.text:
                            yield _sse(schema.Completion(id=cid, created=created, model=name,
                                                         choices=[schema.TextChoice(text=item.text)]))
                    elif isinstance(item, Stats):
                        stats = item
                        break
                    elif isinstance(item, Exception):
                        yield f"data: {json.dumps(_as_api_error(item).body())}\n\n".encode()
                        done = True
                        return
                request.scope["llamactl.usage"] = (stats.prompt_tokens, stats.completion_tokens)
                yield _sse(schema.Completion(id=cid, created=created, model=name, choices=[
                    schema.TextChoice(text="", finish_reason=_finish_reason(stats))]))
                if include_usage:
                    yield _sse(schema.Completion(id=cid, created=created, model=name, choices=[],
                                                 usage=_usage(stats)))
                yield b"data: [DONE]\n\n"
                done = True
            finally:
                if not done:
                    _gone(request, prep, pieces)
                    _cancel(prep)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            return _error(errors.APIError(405, f"{request.method} is not allowed on {request.url.path}"))
        return _error(errors.APIError(exc.status_code, f"no route {request.method} {request.url.path}"
                                      if exc.status_code == 404 else str(exc.detail)))

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(errors.APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found, Exception: server_error})
    gate = Gate(app, state)
    if not cors:
        return gate
    from starlette.middleware.cors import CORSMiddleware

    # outside the gate: a browser's preflight request carries no API key
    return CORSMiddleware(gate, allow_origins=list(cors), allow_methods=["GET", "POST", "OPTIONS"],
                          allow_headers=["Authorization", "Content-Type"])
