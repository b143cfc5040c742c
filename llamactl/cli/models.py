"""`llamactl models`: the catalog."""

from __future__ import annotations

from typing import Any

from llamactl.cli import output
from llamactl.cli.options import JsonOpt


def _count(n: int | None) -> str:
    if not n:
        return "-"
    if n >= 1e12:
        return f"{n / 1e12:.1f}T".replace(".0T", "T")
    if n >= 1e9:
        return f"{n / 1e9:.0f}B" if n >= 1e10 else f"{n / 1e9:.1f}B".replace(".0B", "B")
    return f"{n / 1e6:.0f}M"


def _ctx(n: int | None) -> str:
    if not n:
        return "-"
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n % 1024 == 0:
        return f"{n >> 10}K"
    return str(n)


def _params(e: Any) -> str:
    text = _count(e.params_total)
    if e.params_active:
        text += f" ({_count(e.params_active)} active"
        text += f", {e.experts} experts)" if e.experts else ")"
    return text


def register(app: Any) -> None:
    @app.command("models", help="List the models llamactl knows (the catalog): aliases, "
                                "sources, default quant, license.")
    def models_cmd(as_json: JsonOpt = False) -> None:
        from llamactl import catalog, registry

        entries = catalog.load()
        here: dict[str, list[str]] = {}
        for r in registry.entries():
            if r.get("model") and r.get("tag"):
                here.setdefault(r["model"], []).append(r["tag"])
        if as_json:
            output.json_doc([{**e.to_dict(), "on_this_machine": sorted(here.get(e.name, []))}
                             for e in entries])
            return
        output.rows(["NAME", "ALIASES", "PARAMS", "CONTEXT", "DEFAULT", "LICENSE", "HERE",
                     "GGUF SOURCE"],
                    [[e.name, ",".join(e.aliases) or "-", _params(e), _ctx(e.context_length),
                      e.default_tag, e.license or "-", ",".join(sorted(here.get(e.name, []))) or "-",
                      (e.gguf_repos or ["-"])[0]] for e in entries])
