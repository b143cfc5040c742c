"""`llamactl chat`: the REPL on a terminal, one-shot answers in a pipe or with a prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llamactl.cli.options import (AcceptLicenseOpt, BatchOpt, CpuMoeOpt, CtxOpt, DryRunOpt, FlashAttnOpt, KvCacheOpt,
                                  DraftMaxOpt, DraftOpt, GpuLayersOpt, JsonOpt, KvTypeOpt, ModelArg,
                                  ThreadsOpt, UbatchOpt, VerboseOpt)

PromptArg = Annotated[
    Optional[list[str]],
    typer.Argument(help="A prompt: answer it and exit (one-shot). Piped stdin is read first.",
                   show_default=False),
]


def register(app) -> None:
    @app.command("chat", help=(
        "Chat with a model. On a terminal: an interactive REPL (/help lists its commands). "
        "With a prompt, or with text piped in: print the answer and exit."))
    def chat(
        model: ModelArg,
        prompt: PromptArg = None,
        system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
        system_file: Annotated[Optional[Path], typer.Option(
            "--system-file", help="Read the system prompt from a file.", dir_okay=False)] = None,
        load: Annotated[Optional[Path], typer.Option(
            "--load", help="Resume a conversation saved with /save (JSON).", dir_okay=False)] = None,
        json_out: JsonOpt = False,
        temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (0: greedy).", min=0.0)] = 0.8,
        top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling: keep this probability mass.", min=0.0, max=1.0)] = 0.95,
        top_k: Annotated[int, typer.Option("--top-k", help="Keep the K most likely tokens (0: all).", min=0)] = 40,
        min_p: Annotated[float, typer.Option("--min-p", help="Drop tokens below this fraction of the top one's probability.", min=0.0, max=1.0)] = 0.05,
        repeat_penalty: Annotated[float, typer.Option("--repeat-penalty", help="Penalty for repeated tokens (1.0: none).", min=0.0)] = 1.0,
        seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (same seed, same output).", min=0)] = None,
        max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", "-n", help="Most tokens per answer (default: until the model stops or the context is full).", min=1)] = None,
        ctx: CtxOpt = None,
        threads: ThreadsOpt = None,
        gpu_layers: GpuLayersOpt = "auto",
        cpu_moe: CpuMoeOpt = None,
        kv_type: KvTypeOpt = "f16",
        batch_size: BatchOpt = 512,
        ubatch_size: UbatchOpt = 512,
        chat_format: Annotated[Optional[str], typer.Option("--chat-format", help="Chat template instead of the GGUF's: llama3, llama4, llama2, chatml, plain, or a .jinja file.")] = None,
        image: Annotated[Optional[list[Path]], typer.Option(
            "--image", help="An image for the message (repeatable; Llama 4 with a vision projector).",
            dir_okay=False)] = None,
        mmproj: Annotated[Optional[Path], typer.Option(
            "--mmproj", help="The vision projector (mmproj GGUF) for images (default: the registry's, "
                             "or an mmproj*.gguf beside a .gguf model).", dir_okay=False)] = None,
        flash_attn: FlashAttnOpt = "auto",
        kv_cache: KvCacheOpt = "auto",
        draft: DraftOpt = None,
        draft_max: DraftMaxOpt = None,
        verbose: VerboseOpt = False,
        accept_license: AcceptLicenseOpt = False,
        dry_run: DryRunOpt = False,
    ) -> None:
        import sys

        from llamactl.cli import output
        from llamactl.errors import NotFound, UsageError

        # 1. flags, before anything slow
        if system is not None and system_file is not None:
            raise UsageError("give --system or --system-file, not both")
        if draft_max is not None and draft is None:
            raise UsageError("--draft-max needs --draft MODEL")
        if draft is not None:        # `auto` without a catalog pair says so before any pull
            from llamactl.draft import resolve_reference

            draft = resolve_reference(model, draft)
        from llamactl.load import load_spec

        spec = load_spec(ctx=ctx, gpu_layers=gpu_layers, cpu_moe=cpu_moe, kv_type=kv_type,
                         flash_attn=flash_attn, kv_cache=kv_cache, n_batch=batch_size, n_ubatch=ubatch_size,
                         threads=threads)
        interactive = not prompt and output.stdin_is_tty()
        if json_out and interactive and not dry_run:
            raise UsageError("--json is for one-shot answers",
                             hint='give a prompt (llamactl chat MODEL "question" --json) or pipe text in')
        if system_file is not None:
            try:
                system = system_file.expanduser().read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                raise NotFound(f"system prompt file not found: {system_file}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"cannot read {system_file}: {exc}") from exc

        images = []
        if image:
            from llamactl.images import read_image

            images = [read_image(p) for p in image]     # a bad image: exit 2 before any load
        from llamactl.chat.conversation import Conversation
        from llamactl.engine import EngineOptions, Sampling

        conv = Conversation.load(load) if load is not None else Conversation()
        if system is not None:
            conv.system = system or None
        message = None
        if not interactive and not dry_run:
            from llamactl.cli.oneshot import read_input

            message = read_input(prompt, None if output.stdin_is_tty() else sys.stdin)

        options = EngineOptions(load=spec, seed=seed, verbose=verbose, chat_format=chat_format)

        sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                            repeat_penalty=repeat_penalty, seed=seed, max_tokens=max_tokens)

        # 2. the model
        from llamactl.cli.fetch import resolve_model

        local = resolve_model(model, accept_license=accept_license)
        path = local.path
        draft_ref = draft_local = None
        if draft is not None:
            from llamactl.cli.fetch import resolve_draft

            draft_ref, draft_local = resolve_draft(model, draft, accept_license=accept_license)
        projector = None
        wants_images = bool(images) or any(m.get("images") for m in conv.messages)
        if wants_images or interactive or mmproj is not None:
            from llamactl.images import find_projector

            projector = find_projector(path, local.entry, mmproj)
            if projector is None and wants_images:
                raise UsageError(f"{model} has no vision projector, so it cannot read images",
                                 hint="give one with --mmproj FILE (an mmproj-*.gguf of this model), "
                                      "or put it beside the model file")
        if dry_run:
            from llamactl import offload
            from llamactl.cli.plan import render

            if draft_local is not None:
                from llamactl.cli.plan import render_with_draft
                from llamactl.draft import plan_with_draft

                pair = plan_with_draft(path, draft_local.path, spec, mmproj=projector,
                                       target_name=model, draft_name=draft_ref)
                if json_out:
                    output.json_doc({"model": model, "path": str(path), **pair.to_dict()})
                    return
                for line in render_with_draft(pair, model, draft_ref):
                    output.data(line)
                return
            plan = offload.plan_for_model(path, spec, mmproj=projector)
            if json_out:
                output.json_doc({"model": model, "path": str(path), **plan.to_dict()})
                return
            for line in render(plan, model):
                output.data(line)
            return

        from llamactl.engine import Engine

        options.mmproj = projector if (wants_images or mmproj is not None) else None
        if draft_local is not None:
            engine = Engine.load_with_draft(path, options, draft_local.path, draft_max=draft_max,
                                            target_name=model, draft_name=draft_ref)
        else:
            engine = Engine.load(path, options)
        if projector is not None and options.mmproj is None:
            # the REPL: images become possible with /image; a projector that does not fit
            # this model is reported and the chat goes on without images
            from llamactl.errors import LlamactlError

            try:
                engine.attach_projector(projector)
            except LlamactlError as exc:
                output.warn(f"images are off: {exc.message}")
        if verbose:
            for warning in engine.plan.warnings:
                output.warn(warning)
        try:
            if interactive:
                from llamactl.cli.repl import run_repl

                code = run_repl(engine, conv, sampling, model_name=model, images=images)
                raise typer.Exit(code)
            from llamactl.cli.oneshot import run_oneshot

            try:
                run_oneshot(engine, conv, message, sampling, model_name=model,
                            json_out=json_out, notice=output.note, images=images)
            except BrokenPipeError:
                # stdout's reader went away (`| head -c 20`): stop generating, end quietly
                output.stdout_gone()
                raise typer.Exit(0) from None
            stats = engine.last_stats
            if verbose and stats is not None:
                output.note(f"{stats.completion_tokens} tokens, {stats.generation_tps:.1f} tok/s, "
                            f"TTFT {stats.ttft_seconds:.2f} s, prompt {stats.prompt_tokens} tokens "
                            f"({stats.prompt_tokens_evaluated} evaluated)"
                            + (f", {output.draft_text(stats)}" if stats.draft_tokens else ""))
        finally:
            engine.close()
