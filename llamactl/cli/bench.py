"""`llamactl bench`: llama-bench-style measurements through the chat engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llamactl.cli.options import (AcceptLicenseOpt, BatchListOpt, CtxListOpt, FlashAttnListOpt, GpuLayersListOpt,
                                  DraftMaxOpt, DraftOpt, KvTypeListOpt, QuietOpt, ThreadsListOpt, UbatchListOpt, VerboseOpt)
from llamactl.errors import LlamactlError, UsageError

FORMATS = ("table", "md", "csv", "json", "jsonl")

# Columns shown only when some row differs from the default (llama-bench does the same).
_OPTIONAL_COLUMNS = [
    ("n_batch", "n_batch", 512),
    ("n_ubatch", "n_ubatch", 512),
    ("n_ctx", "n_ctx", None),
    ("kv_type", "type_kv", "f16"),
    ("flash_attn", "fa", False),
]


def _size(n: Any) -> str:
    if n is None:
        return ""
    from llamactl.fsutil import human_bytes

    return human_bytes(n)


def _params(n: Any) -> str:
    if n is None:
        return ""
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _tps(row: dict) -> str:
    if row.get("error"):
        return f"error: {row['error']}"
    mean, sd = row.get("tps_mean"), row.get("tps_sd")
    if mean is None or (isinstance(mean, float) and mean != mean):  # None or NaN
        return ""
    return f"{mean:.2f} ± {sd:.2f}"


def _threads(row: dict) -> str:
    """Generation threads, and prompt threads after a slash when they differ."""
    t, tb = row.get("threads"), row.get("threads_batch")
    if t is None:
        return ""
    return f"{t}/{tb}" if tb not in (None, t) else str(t)


def _model_name(ref: str) -> str:
    return Path(ref).name if ref.lower().endswith(".gguf") else ref


def _columns(rows: list[dict], history: bool = False,
             show_ctx: bool = False) -> list[tuple[str, Any, str]]:
    """(header, getter, justify) for the human-readable tables (terminal, md)."""
    cols: list[tuple[str, Any, str]] = []
    if history:
        cols += [("saved", lambda r: (r.get("saved_at") or "")[:16].replace("T", " "), "left"),
                 ("host", lambda r: (r.get("machine") or {}).get("hostname", ""), "left")]
    cols += [
        ("model", lambda r: _model_name(r["model"]), "left"),
        ("type", lambda r: r.get("model_type") or "", "left"),
        ("size", lambda r: _size(r.get("model_size")), "right"),
        ("params", lambda r: _params(r.get("model_params")), "right"),
        ("backend", lambda r: r.get("backend") or "", "left"),
        ("ngl", lambda r: "" if r.get("gpu_layers") is None else str(r["gpu_layers"]), "right"),
        ("threads", _threads, "right"),
    ]
    for key, header, default in _OPTIONAL_COLUMNS:
        shown = show_ctx if key == "n_ctx" else any(
            r.get(key) is not None and r.get(key) != default for r in rows)
        if shown:
            cols.append((header, lambda r, k=key: _cell(r.get(k)), "right"))
    if any(r.get("draft") for r in rows):
        cols += [("draft", lambda r: _model_name(r["draft"]) if r.get("draft") else "", "left"),
                 ("accepted", lambda r: "" if r.get("draft_acceptance") is None
                  else f"{100 * r['draft_acceptance']:.0f}%", "right")]
    cols += [("test", lambda r: r.get("test", ""), "right"), ("t/s", _tps, "right")]
    return cols


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return str(int(value)) if isinstance(value, bool) else str(value)


def render_md(rows: list[dict], history: bool = False, show_ctx: bool = False) -> str:
    cols = _columns(rows, history, show_ctx)
    cells = [[str(get(r)).replace("|", "\\|") for _, get, _ in cols] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(cols)]
    lines = ["| " + " | ".join(h.ljust(w) for (h, _, _), w in zip(cols, widths)) + " |",
             "| " + " | ".join(("-" * (w - 1) + ":") if j == "right" else "-" * w
                               for (_, _, j), w in zip(cols, widths)) + " |"]
    for c in cells:
        lines.append("| " + " | ".join((v.rjust(w) if j == "right" else v.ljust(w))
                                       for v, (_, _, j), w in zip(c, cols, widths)) + " |")
    return "\n".join(lines)


def render_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k != "machine"]
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        writer.writerow([" ".join(f"{x:.6g}" for x in r[k]) if isinstance(r.get(k), list)
                         else "" if r.get(k) is None else r[k] for k in keys])
    return buf.getvalue().rstrip("\n")


def render_table(rows: list[dict], history: bool = False, show_ctx: bool = False):
    from rich.table import Table

    cols = _columns(rows, history, show_ctx)
    tbl = Table(show_lines=False)
    for header, _, justify in cols:
        wraps = header in ("model", "type", "host")
        tbl.add_column(header, justify=justify, no_wrap=not wraps,
                       overflow="fold" if wraps else "ellipsis", ratio=1 if wraps else None)
    for r in rows:
        cells = [str(get(r)) for _, get, _ in cols]
        tbl.add_row(*cells, style="red" if r.get("error") else None)
    return tbl


def _emit(rows: list[dict], fmt: str, *, machine: dict | None, history: bool = False,
          show_ctx: bool = False) -> None:
    import json

    from llamactl.cli import output

    if fmt == "json":
        output.json_doc({"machine": machine, "results": rows} if not history else {"history": rows})
    elif fmt == "jsonl":
        for r in rows:
            line = r if history else {**r, "machine": machine}
            output.data(json.dumps(line, ensure_ascii=False, default=str))
    elif fmt == "csv":
        text = render_csv(rows)
        if text:
            output.data(text)
    elif fmt == "md":
        output.data(render_md(rows, history, show_ctx))
    else:
        output.table(render_table(rows, history, show_ctx))


def _resolver(accept_license: bool, quiet: bool):
    from llamactl.cli.fetch import resolve_model

    return lambda ref: resolve_model(ref, accept_license=accept_license, quiet=quiet).path


def register(app: typer.Typer) -> None:
    @app.command("bench", help=(
        "Benchmark models like llama-bench, through the engine chat uses: pp N (prompt), "
        "tg N (generation), pg P,N, at a --depth. Comma-separated values sweep a parameter; "
        "every combination is a row. Mean ± sd of tokens/s over the counted repetitions "
        "(one warm-up run is not counted)."))
    def bench(
        models: Annotated[Optional[list[str]], typer.Argument(
            help="Models: catalog names, hf.co/... references or .gguf paths (several: one "
                 "row set each).", show_default=False)] = None,
        n_prompt: Annotated[Optional[str], typer.Option(
            "--n-prompt", "-p", help="Prompt sizes for pp tests, comma-separated (0: none). "
            "[default: 512, unless --test or --pg is given]", show_default=False)] = None,
        n_gen: Annotated[Optional[str], typer.Option(
            "--n-gen", "-n", help="Generation lengths for tg tests, comma-separated (0: none). "
            "[default: 128, unless --test or --pg is given]", show_default=False)] = None,
        pg: Annotated[Optional[list[str]], typer.Option(
            "--pg", "-pg", help="A prompt-then-generate test P,N (repeatable).",
            show_default=False)] = None,
        test: Annotated[Optional[list[str]], typer.Option(
            "--test", help="A test spec: 'pp N', 'tg N' or 'pg P,N' (repeatable).", show_default=False)] = None,
        depth: Annotated[str, typer.Option(
            "--depth", "-d", help="Tokens already in the context, comma-separated.")] = "0",
        repetitions: Annotated[int, typer.Option(
            "--repetitions", "-r", help="Counted repetitions of each test.", min=1)] = 5,
        no_warmup: Annotated[bool, typer.Option(
            "--no-warmup", help="Skip the uncounted warm-up run.")] = False,
        gpu_layers: GpuLayersListOpt = "auto",
        threads: ThreadsListOpt = None,
        batch_size: BatchListOpt = "512",
        ubatch_size: UbatchListOpt = "512",
        ctx: CtxListOpt = None,
        kv_type: KvTypeListOpt = "f16",
        flash_attn: FlashAttnListOpt = "0",
        output_format: Annotated[Optional[str], typer.Option(
            "--output", "-o", help="table | md | csv | json | jsonl (default: table on a "
            "terminal, md otherwise).", show_default=False)] = None,
        json_out: Annotated[bool, typer.Option(
            "--json", help="Same as -o json: one JSON document with the machine details.")] = False,
        save: Annotated[bool, typer.Option(
            "--save", help="Append the results to the local history (see --history).")] = False,
        history: Annotated[bool, typer.Option(
            "--history", help="List the saved results instead of running anything.")] = False,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random prompt tokens.")] = 1234,
        draft: DraftOpt = None,
        draft_max: DraftMaxOpt = None,
        accept_license: AcceptLicenseOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        from llamactl import bench as core
        from llamactl.machine import machine_info
        from llamactl.cli import output

        # ---- check every flag before any slow work
        fmt = (output_format or "").lower() or None
        if json_out:
            if fmt not in (None, "json"):
                raise UsageError(f"--json conflicts with -o {fmt}")
            fmt = "json"
        if fmt is not None and fmt not in FORMATS:
            raise UsageError(f"bad --output value: {output_format!r}", hint="one of " + ", ".join(FORMATS))
        if fmt is None:
            fmt = "table" if output.stdout_is_tty() else "md"
        if draft_max is not None and draft is None:
            raise UsageError("--draft-max needs --draft MODEL")
        if draft is not None:        # `auto` without a catalog pair says so before any pull
            from llamactl.draft import resolve_reference

            for ref in models or []:
                resolve_reference(ref, draft)

        if history:
            if models:
                raise UsageError("--history lists saved results; it takes no model",
                                 hint="run `llamactl bench --history` on its own")
            if save:
                raise UsageError("--history and --save do not go together")
            records, bad = core.load_history()
            if bad:
                output.warn(f"skipped {bad} unreadable line(s) in {core.history_path()}")
            if not records and fmt == "table":
                output.info(f"no saved results yet ({core.history_path()}); run `llamactl bench MODEL --save`")
                return
            _emit(records, fmt, machine=None, history=True)
            return

        if not models:
            raise UsageError("no model given", hint="llamactl bench MODEL [MODEL...] (or --history)")

        specs = list(test or [])
        pp_list = core.parse_int_list("--n-prompt", n_prompt, minimum=0) if n_prompt is not None else (
            [] if specs or pg else [512])
        tg_list = core.parse_int_list("--n-gen", n_gen, minimum=0) if n_gen is not None else (
            [] if specs or pg else [128])
        pg_pairs = []
        for value in pg or []:
            spec = core.parse_test_spec(f"pg {value}")
            pg_pairs.append((spec.n_prompt, spec.n_gen))
        for s in specs:
            core.parse_test_spec(s)  # exit 2 naming a bad spec now, not after loading
        depths = core.parse_int_list("--depth", depth, minimum=0)
        tests = core.build_tests(n_prompt=pp_list, n_gen=tg_list, pg=pg_pairs, specs=specs,
                                 depths=depths)
        sweep = core.Sweep(
            gpu_layers=core.parse_gpu_layers(gpu_layers),
            threads=core.parse_int_list("--threads", threads) if threads is not None else [None],
            n_batch=core.parse_int_list("--batch-size", batch_size),
            n_ubatch=core.parse_int_list("--ubatch-size", ubatch_size),
            n_ctx=core.parse_int_list("--ctx", ctx) if ctx is not None else [None],
            kv_type=core.parse_kv_types(kv_type),
            flash_attn=core.parse_bool_list("--flash-attn", flash_attn),
        )
        sweep.check()
        core.check_depths(tests, sweep)

        progress = None if quiet else output.note
        resolve = _resolver(accept_license, quiet)
        machine = machine_info()
        results: list[core.BenchRow] = []
        rows: list[dict] = []
        first_error: core.BenchRow | None = None
        warned: set[tuple[str, str]] = set()
        for row in core.run_bench(models, tests, sweep, reps=repetitions, warmup=not no_warmup,
                                  seed=seed, resolve=resolve, progress=progress, verbose=verbose,
                                  draft=draft, draft_max=draft_max):
            d = row.to_dict()
            results.append(row)
            rows.append(d)
            if row.error:
                first_error = first_error or row
                if not quiet and (row.model, row.error) not in warned:
                    warned.add((row.model, row.error))
                    output.warn(f"{row.model}: {row.error}")
            elif not quiet:
                output.note(f"{_model_name(row.model)} {row.test}: {_tps(d)} t/s")

        _emit(rows, fmt, machine=machine, show_ctx=ctx is not None)

        ok_rows = [r for r in results if not r.error]
        if save and ok_rows:
            saved = core.save_history(ok_rows, machine)
            if not quiet:
                output.note(f"saved {len(ok_rows)} result(s) to {saved}")
        if first_error is not None:
            failed = sum(1 for r in results if r.error)
            err = LlamactlError(f"{failed} of {len(results)} benchmark rows failed; first: "
                                f"{_model_name(first_error.model)}: {first_error.error}",
                                hint=first_error.error_hint)
            err.exit_code = first_error.exit_code or 1
            raise err
