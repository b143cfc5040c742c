"""Running the server: bind, serve with uvicorn, load the models, shut down gracefully.

The socket is bound before uvicorn starts (so `--port 0` gets a free port and the URL can be
told); `on_url` is called once uvicorn accepts connections. The models load after that, in
a thread, while /health answers "loading". SIGTERM or Ctrl-C: uvicorn stops accepting,
waits for the requests in flight (at most `shutdown_timeout` seconds), and `run` returns.
A failure to load ends the server and is raised from `run`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamactl.errors import LlamactlError, UsageError


@dataclass
class ModelToServe:
    name: str
    path: Path
    options: Any                   # llamactl.engine.EngineOptions for the model's own (small) context
    slots: int
    slot_ctx: int
    n_batch: int = 512
    n_ubatch: int = 512
    aliases: set[str] = field(default_factory=set)
    allow_file_images: bool = False    # image_url parts may name local files
    draft_name: str | None = None      # a draft model (--draft) for speculative decoding
    draft_path: Path | None = None
    draft_options: Any = None          # its EngineOptions (placement planned with the model's)
    draft_max: int | None = None       # tokens proposed per step (None: adaptive)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve --host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise LlamactlError(f"cannot listen on {host}:{port}: {exc.strerror}",
                            hint="choose another --port (0: any free port)") from None
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = host.strip("[]")
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/v1"


def run(models: list[ModelToServe], *, host: str, port: int, api_key: str | None, queue: int,
        cors: list[str] | None, max_body: int, verbose: bool, on_url: Callable[[str], None],
        log: Callable[[str], None], shutdown_timeout: float = 10.0) -> None:
    import uvicorn

    from llamactl.serve.app import ServedModel, ServerState, build_app

    sock = bind(host, port)
    url = base_url(sock, host)
    state = ServerState(
        models=[ServedModel(name=m.name, aliases=set(m.aliases), slot_ctx=m.slot_ctx,
                            allow_file_images=m.allow_file_images) for m in models],
        api_key=api_key, max_body=max_body, verbose=verbose, log=log)
    app = build_app(state, cors)
    config = uvicorn.Config(app, log_config=None, log_level="info" if verbose else "warning",
                            access_log=False, lifespan="off", timeout_graceful_shutdown=shutdown_timeout,
                            server_header=False)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def load_all() -> None:
        from llamactl.draft import DEFAULT_DRAFT_MAX
        from llamactl.engine import Engine
        from llamactl.engine.batch import BatchDecoder
        from llamactl.serve.scheduler import Scheduler

        try:
            for spec, served in zip(models, state.models):
                engine = Engine.load(spec.path, spec.options)
                served.engine = engine
                draft = None
                if spec.draft_path is not None:
                    draft = engine.load_draft_engine(spec.draft_path, spec.draft_options, name=spec.draft_name,
                                                     target_name=spec.name)
                    served.draft = draft
                decoder = BatchDecoder(engine, spec.slots, spec.slot_ctx, spec.n_batch, spec.n_ubatch,
                                       draft=draft, draft_max=spec.draft_max or DEFAULT_DRAFT_MAX,
                                       adaptive=spec.draft_max is None)
                served.scheduler = Scheduler(decoder, queue, name=spec.name)
                log(f"{spec.name}: {spec.slots} slots of {spec.slot_ctx} tokens "
                    + (f"drafted by {spec.draft_name} " if draft is not None else "")
                    + f"(loaded in {engine.load_seconds:.1f} s)")
            state.status = "ready"
        except BaseException as exc:  # reported by run() once the server is down
            state.status = "failed"
            failure.append(exc)
            server.should_exit = True

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            on_url(url)
            threading.Thread(target=load_all, name="load", daemon=True).start()
        await task

    # uvicorn re-raises the signal that stopped it once it is done: record it instead
    stopped_by: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: stopped_by.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(main())
    finally:
        for served in state.models:
            if served.scheduler is not None:
                served.scheduler.stop()
                served.scheduler.decoder.close()
            if served.draft is not None:
                served.draft.close()
            if served.engine is not None:
                served.engine.close()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        exc = failure[0]
        if isinstance(exc, LlamactlError):
            raise exc
        raise LlamactlError(f"loading failed: {type(exc).__name__}: {exc}") from exc
