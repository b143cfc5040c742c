"""`llamactl serve`: an OpenAI-compatible HTTP server with parallel slots.

Order of work: flags are checked; every model is resolved (pulled first, license gate
included); all of them are planned together (exit 8 with the numbers if they do not fit);
then the port is bound, the base URL is printed on stdout (the only stdout line) and the
models load. Everything else goes to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llamactl.cli.options import (AcceptLicenseOpt, BatchOpt, CpuMoeOpt, DraftMaxOpt, DraftOpt, FlashAttnOpt,
                                  GpuLayersOpt, KvTypeOpt, ThreadsOpt, UbatchOpt, VerboseOpt)

ModelsArg = Annotated[
    list[str],
    typer.Argument(
        help="One or more models: a catalog name[:tag], hf.co/OWNER/REPO[:TAG], hf://OWNER/REPO[/PATH] "
        "or a path to a .gguf file. Requests name one by the name `llamactl list` shows or by this reference.",
        show_default=False,
    ),
]

DEFAULT_SLOT_CTX = 4096      # a slot's context when --ctx is not given (capped by the model's)
MAX_DEFAULT_SLOTS = 4


def serve(
    models: ModelsArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but loopback "
                                      "without --api-key gets a warning.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port).", min=0, max=65535)] = 8080,
    parallel: Annotated[Optional[int], typer.Option(
        "--parallel", "-np", help="Requests decoded together per model (default: as many, up to 4, "
        "as the memory plan fits).", min=1, max=64)] = None,
    queue: Annotated[int, typer.Option("--queue", help="Requests that may wait for a slot; more get 503.",
                                       min=0)] = 64,
    ctx: Annotated[Optional[int], typer.Option(
        "--ctx", "-c", help=f"Context of ONE slot in tokens (default: {DEFAULT_SLOT_CTX}, or the model's if "
        "smaller); the KV cache holds slots x ctx.", min=16)] = None,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="LLAMACTL_API_KEY", show_envvar=True,
        help="Require Authorization: Bearer KEY on every route but /health.")] = None,
    cors: Annotated[Optional[list[str]], typer.Option(
        "--cors", help="Allow browsers from this origin (repeatable; none by default).")] = None,
    max_body: Annotated[str, typer.Option("--max-body", help="Largest request body (413 above).")] = "8MiB",
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = "auto",
    cpu_moe: CpuMoeOpt = None,
    kv_type: KvTypeOpt = "f16",
    batch_size: BatchOpt = 512,
    ubatch_size: UbatchOpt = 512,
    flash_attn: FlashAttnOpt = "off",
    chat_format: Annotated[Optional[str], typer.Option(
        "--chat-format", help="Chat template instead of the GGUF's: llama3, llama4, llama2, chatml, "
        "plain, or a .jinja file.")] = None,
    allow_file_images: Annotated[bool, typer.Option(
        "--allow-file-images", help="Let image_url parts name files on this machine (paths or file: "
        "URLs); without it only data: URLs are read.")] = False,
    draft: DraftOpt = None,
    draft_max: DraftMaxOpt = None,
    verbose: VerboseOpt = False,
    accept_license: AcceptLicenseOpt = False,
) -> None:
    """Serve models over an OpenAI-compatible API (/v1/chat/completions, /v1/completions,
    /v1/models, /health). Prints the base URL on stdout once it accepts connections.

    Example: llamactl serve llama3.2-1b --port 0 --parallel 4
    """
    from llamactl.cli import output
    from llamactl.load import load_spec, parse_size
    from llamactl.serve.server import ModelToServe, is_loopback, run

    # 1. flags, before anything slow (the load options by llamactl.load's one set of rules)
    spec = load_spec(ctx=ctx, gpu_layers=gpu_layers, cpu_moe=cpu_moe, kv_type=kv_type,
                     flash_attn=flash_attn, n_batch=batch_size, n_ubatch=ubatch_size, threads=threads)
    limit = parse_size(max_body, "--max-body")
    if limit < 1024:
        from llamactl.errors import UsageError

        raise UsageError(f"--max-body {max_body} is too small", hint="give at least 1KiB")
    if draft_max is not None and draft is None:
        from llamactl.errors import UsageError

        raise UsageError("--draft-max needs --draft MODEL")
    if draft is not None:            # `auto` without a catalog pair says so before any pull
        from llamactl.draft import resolve_reference

        for ref in models:
            resolve_reference(ref, draft)
    if not is_loopback(host) and not api_key:
        output.warn(f"listening on {host} without --api-key: anyone who can reach it can use it")

    # 2. the models, 3. one plan for all of them
    specs = [_resolve(ref, accept_license=accept_license, draft=draft) for ref in models]
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        from llamactl.errors import UsageError

        raise UsageError("the same model is given twice")
    loads = _plan(specs, spec, parallel=parallel, chat_format=chat_format, verbose=verbose)
    for load in loads:
        output.info(load.pop("summary"))
    to_serve = [ModelToServe(**load, allow_file_images=allow_file_images, draft_max=draft_max) for load in loads]

    # 4. bind, print the URL, load, serve until SIGTERM / Ctrl-C
    run(to_serve, host=host, port=port, api_key=api_key, queue=queue, cors=cors, max_body=limit,
        verbose=verbose, on_url=output.data, log=output.note)


def _resolve(ref: str, *, accept_license: bool, draft: str | None = None) -> dict[str, Any]:
    """A model reference -> {name, aliases, path} through llamactl.models' one resolver
    (pulled first when missing, license gate included), with its draft model's (--draft;
    `auto`: the catalog's pair of this model) as draft_name and draft_path. A loose .gguf
    is named by its file name without .gguf; the reference as typed is always an alias."""
    from llamactl.cli.fetch import resolve_draft, resolve_model

    from llamactl.images import find_projector

    local = resolve_model(ref, accept_license=accept_license)
    name = local.name if local.entry is not None else Path(local.path).name.removesuffix(".gguf")
    # a Llama 4 model's vision projector (the registry's, or one beside the file): image_url parts
    out = {"name": name, "aliases": {ref} - {name}, "path": Path(local.path),
           "mmproj": find_projector(local.path, local.entry)}
    if draft is not None:
        draft_ref, draft_local = resolve_draft(ref, draft, accept_license=accept_license)
        out.update(draft_name=draft_ref, draft_path=Path(draft_local.path))
    return out


def _plan(models: list[dict[str, Any]], spec: Any, *, parallel: int | None, chat_format: str | None,
          verbose: bool) -> list[dict[str, Any]]:
    """Plan every model for its slots (--parallel N, or the most up to 4 that fit all of
    them together); the KV cache holds slots x ctx tokens. InsufficientResources (exit 8)
    with the numbers when they do not fit."""
    from llamactl.engine import EngineOptions
    from llamactl.errors import InsufficientResources
    from llamactl.fsutil import human_bytes
    from llamactl.gguf_info import read_gguf
    from llamactl.draft import plan_with_draft
    from llamactl.offload import plan_for_model

    slot_ctx = {}
    for m in models:
        trained = read_gguf(m["path"]).context_length or DEFAULT_SLOT_CTX
        slot_ctx[m["name"]] = spec.ctx or min(DEFAULT_SLOT_CTX, trained)
    tries = [parallel] if parallel else list(range(MAX_DEFAULT_SLOTS, 0, -1))
    last_error: InsufficientResources | None = None
    for slots in tries:
        plans, drafts = [], []
        try:
            for m in models:
                # a draft mirrors the slots: its KV cache holds slots x ctx tokens too
                slots_spec = spec.replace(ctx=slots * slot_ctx[m["name"]], kv_cache="full")
                if m.get("draft_path") is None:
                    plans.append(plan_for_model(m["path"], slots_spec, mmproj=m.get("mmproj")))
                    drafts.append(None)
                    continue
                pair = plan_with_draft(m["path"], m["draft_path"], slots_spec, mmproj=m.get("mmproj"),
                                       target_name=m["name"], draft_name=m["draft_name"])
                plans.append(pair.target)
                drafts.append(pair)
        except InsufficientResources as exc:
            last_error = exc
            continue
        ram = plans[0].ram
        vram = max(0, plans[0].vram - plans[0].margin)
        need_cpu = sum(p.cpu.get("total", 0) for p in plans) + sum(d.draft.cpu.get("total", 0) for d in drafts if d)
        need_gpu = (sum(p.gpu.get("total", 0) for p in plans if p.n_gpu_layers)
                    + sum(d.draft.gpu.get("total", 0) for d in drafts if d and d.draft.n_gpu_layers))
        if len(plans) + sum(1 for d in drafts if d) > 1 and ((ram and need_cpu > ram) or (vram and need_gpu > vram)):
            last_error = InsufficientResources(
                f"{len(plans)} models with {slots} slots each need {human_bytes(need_cpu)} of RAM and "
                f"{human_bytes(need_gpu)} of GPU memory; this machine has {human_bytes(ram)} RAM and "
                f"{human_bytes(vram)} GPU", hint="serve fewer models, or use --parallel 1 or a smaller --ctx")
            continue
        out = []
        for m, plan, pair in zip(models, plans, drafts):
            n = slot_ctx[m["name"]]
            # the engine's own context stays small: the slots' context is the server's
            # (the slots' context copies the engine's: flash attention as the slots' plan
            # resolved it, and Llama 4's full-size cache, which the batched slots assume)
            own = spec.replace(ctx=256, n_batch=256, n_ubatch=256, gpu_layers=plan.n_gpu_layers,
                               cpu_moe=plan.cpu_moe or None, flash_attn=plan.flash_attn, kv_cache="full")
            mmproj = m.get("mmproj") if plan.architecture == "llama4" else None
            options = EngineOptions(load=own, verbose=verbose, chat_format=chat_format, mmproj=mmproj)
            load = {"name": m["name"], "aliases": m["aliases"], "path": m["path"], "options": options,
                    "slots": slots, "slot_ctx": n, "n_batch": spec.n_batch, "n_ubatch": spec.n_ubatch,
                    "summary": f"{m['name']}: {slots} slots x {n} tokens; {plan.summary()}"}
            if pair is not None:
                d = pair.draft
                draft_own = own.for_draft(256, gpu_layers=d.n_gpu_layers).replace(flash_attn=d.flash_attn)
                load.update(draft_name=m["draft_name"], draft_path=m["draft_path"],
                            draft_options=EngineOptions(load=draft_own, verbose=verbose))
                load["summary"] += (f"; draft {m['draft_name']} on the {pair.draft_on.upper()} "
                                    f"({human_bytes(d.cpu.get('total', 0) + d.gpu.get('total', 0))})")
            out.append(load)
        return out
    assert last_error is not None
    raise last_error


def register(app: Any) -> None:
    app.command("serve", help=(
        "Serve models over an OpenAI-compatible API with parallel slots. Prints the base URL "
        "(http://HOST:PORT/v1) on stdout once it accepts connections; SIGTERM or Ctrl-C stops it."))(serve)
