"""`llamactl plan`: the memory plan for a model on this machine (or another, with --vram/--ram)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from llamactl.cli.options import (AcceptLicenseOpt, BatchOpt, CpuMoeOpt, CtxOpt, FlashAttnOpt, GpuLayersOpt, KvCacheOpt,
                                  DraftOpt, JsonOpt, KvTypeOpt, ModelArg, RamOpt, UbatchOpt, VramOpt)

if TYPE_CHECKING:
    from llamactl.draft import DraftPlan
    from llamactl.offload import Plan


def _row(label: str, gpu: int | str, cpu: int | str) -> str:
    from llamactl.fsutil import human_bytes

    g = human_bytes(gpu) if isinstance(gpu, int) else gpu
    c = human_bytes(cpu) if isinstance(cpu, int) else cpu
    return f"  {label:<22}{g:>12}  {c:>12}"


def _layers_text(layers: list[int]) -> str:
    if not layers:
        return "none"
    runs: list[str] = []
    start = prev = layers[0]
    for i in layers[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(runs)


def render(plan: "Plan", model_ref: str) -> list[str]:
    from pathlib import Path

    from llamactl.fsutil import human_bytes

    lines = [
        f"model     {Path(plan.model).name} ({plan.architecture}, {plan.n_layers} layers)",
        f"machine   GPU {human_bytes(plan.vram)} ({plan.devices_source}), "
        f"RAM {human_bytes(plan.ram)}, margin {human_bytes(plan.margin)}",
        f"plan      {plan.strategy}: {plan.n_gpu_layers}/{plan.n_layers + 1} layers on the GPU"
        f"{' (output layer included)' if plan.output_on_gpu else ''}, ctx {plan.n_ctx}, "
        f"KV {plan.kv_type}{' chunked' if plan.kv_cache == 'chunked' else ''}"
        f"{', flash attention' if plan.flash_attn else ''}",
    ]
    if plan.ctx_limit:
        lines.append(f"ctx max   {plan.n_ctx} tokens, limited by {plan.ctx_limit}")
    if len(set(plan.kv_cells)) > 1:
        lines.append(f"KV cells  {max(plan.kv_cells)} on the global layers, {min(plan.kv_cells)} on the "
                     "chunked-attention layers (chunked cache)")
    if plan.expert_layers_on_cpu:
        lines.append(f"experts   in RAM for layers {_layers_text(plan.expert_layers_on_cpu)}")
        for p in plan.cpu_tensor_patterns:
            lines.append(f"          -ot \"{p}=CPU\"")
    lines.append("")
    lines.append(_row("", "GPU", "RAM"))
    g, c = plan.gpu, plan.cpu
    lines.append(_row("weights", g.get("weights", 0), c.get("weights", 0)))
    if g.get("output_copy"):
        lines.append(_row("output (tied copy)", g["output_copy"], "-"))
    lines.append(_row("KV cache", g.get("kv_cache", 0), c.get("kv_cache", 0)))
    lines.append(_row("compute (estimate)", g.get("compute", 0), c.get("compute", 0)))
    if plan.mmproj:
        lines.append(_row("vision projector", g.get("vision_weights", "-"), c.get("vision_weights", "-")))
        lines.append(_row("  its compute (est.)", g.get("vision_compute", "-"), c.get("vision_compute", "-")))
    lines.append(_row("CUDA overhead (est.)", g.get("overhead", 0), "-"))
    lines.append(_row("total", g.get("total", 0), c.get("total", 0)))
    lines.append(f"  model weights, all devices: {human_bytes(plan.weights_total)} "
                 f"({plan.weights_total} bytes)")
    args = [f"--gpu-layers {plan.n_gpu_layers}", f"--ctx {plan.n_ctx}"]
    if plan.cpu_moe:
        args.append(f"--cpu-moe {plan.cpu_moe}")
    if plan.flash_attn:
        args.append("--flash-attn on")
    if plan.kv_cache == "chunked":
        args.append("--kv-cache chunked")
    if plan.alternatives:
        lines.append("")
        lines.append("does not fit; each of these would:")
        lines.extend(f"  {alt}" for alt in plan.alternatives)
    if plan.fits:
        lines.append("")
        lines.append(f"run       llamactl chat {model_ref} {' '.join(args)}")
    return lines


def render_with_draft(pair: "DraftPlan", model_ref: str, draft_ref: str) -> list[str]:
    """The target's plan (as `render`), then the draft's placement and memory."""
    from llamactl.fsutil import human_bytes

    d = pair.draft
    lines = render(pair.target, model_ref)
    run = lines[-1] if lines and lines[-1].startswith("run ") else None
    if run is not None:
        lines = lines[:-1]
    lines += [
        f"draft     {Path(d.model).name} ({d.architecture}, {d.n_layers} layers): "
        + (f"wholly on the GPU ({d.n_gpu_layers}/{d.n_layers + 1} layers)" if pair.draft_on == "gpu"
           else "on the CPU (it does not fit on the GPU beside the model)") + f", ctx {d.n_ctx}",
        _row("draft weights", d.gpu.get("weights", 0), d.cpu.get("weights", 0)),
        _row("draft KV cache", d.gpu.get("kv_cache", 0), d.cpu.get("kv_cache", 0)),
        _row("draft compute (est.)", d.gpu.get("compute", 0), d.cpu.get("compute", 0)),
        _row("total with draft", pair.target.gpu.get("total", 0) + d.gpu.get("total", 0),
             pair.target.cpu.get("total", 0) + d.cpu.get("total", 0)),
        f"  draft weights, all devices: {human_bytes(d.weights_total)} ({d.weights_total} bytes)",
    ]
    if run is not None:
        lines.append(f"{run} --draft {draft_ref}")
    return lines


def register(app: Any) -> None:
    @app.command("plan", help="Show the memory plan: what goes on the GPU and in RAM, at which "
                              "context. --vram/--ram plan for another machine.")
    def plan_cmd(
        model: ModelArg,
        ctx: CtxOpt = None,
        vram: VramOpt = None,
        ram: RamOpt = None,
        kv_type: KvTypeOpt = "f16",
        flash_attn: FlashAttnOpt = "auto",
        kv_cache: KvCacheOpt = "auto",
        gpu_layers: GpuLayersOpt = "auto",
        cpu_moe: CpuMoeOpt = None,
        batch_size: BatchOpt = 512,
        ubatch_size: UbatchOpt = 512,
        accept_license: AcceptLicenseOpt = False,
        mmproj: Annotated[Optional[Path], typer.Option(
            "--mmproj", help="Plan this vision projector too (default: the model's, when it has one).",
            dir_okay=False)] = None,
        no_mmproj: Annotated[bool, typer.Option("--no-mmproj", help="Plan without the vision projector.")] = False,
        draft: DraftOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        from llamactl import offload
        from llamactl.cli import output
        from llamactl.load import load_spec, parse_size

        # flags first, before any slow work
        vram_bytes = parse_size(vram, "--vram") if vram is not None else None
        ram_bytes = parse_size(ram, "--ram") if ram is not None else None
        spec = load_spec(ctx=ctx, gpu_layers=gpu_layers, cpu_moe=cpu_moe, kv_type=kv_type,
                         flash_attn=flash_attn, kv_cache=kv_cache, n_batch=batch_size, n_ubatch=ubatch_size)
        if draft is not None:        # `auto` without a catalog pair says so before any pull
            from llamactl.draft import resolve_reference

            draft = resolve_reference(model, draft)

        from llamactl.cli.fetch import resolve_model

        local = resolve_model(model, accept_license=accept_license, quiet=as_json)
        path = local.path
        from llamactl.images import find_projector

        projector = None if no_mmproj else find_projector(path, local.entry, mmproj)
        draft_ref = draft_local = None
        if draft is not None:
            from llamactl.cli.fetch import resolve_draft

            draft_ref, draft_local = resolve_draft(model, draft, accept_license=accept_license, quiet=as_json)
        from llamactl.draft import plan_with_draft

        try:
            if draft_local is None:
                result = offload.plan_for_model(path, spec, vram=vram_bytes, ram=ram_bytes, mmproj=projector)
            else:
                result = plan_with_draft(path, draft_local.path, spec, vram=vram_bytes, ram=ram_bytes,
                                         mmproj=projector, target_name=model, draft_name=draft_ref)
        except offload.DoesNotFit as exc:
            if as_json:
                output.json_doc(exc.plan.to_dict())
            else:
                for line in render(exc.plan, model):
                    output.data(line)
            raise
        if as_json:
            output.json_doc(result.to_dict())
        else:
            lines = render(result, model) if draft_local is None else render_with_draft(result, model, draft_ref)
            for line in lines:
                output.data(line)
        plans = [result] if draft_local is None else [result.target, result.draft]
        for w in (w for p in plans for w in p.warnings):
            output.warn(w)
