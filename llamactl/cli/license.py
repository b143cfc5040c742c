"""`llamactl license list|show|accept|revoke` (the prompt a pull shows is in cli/fetch.py)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llamactl.cli import output
from llamactl.cli.options import JsonOpt

FamilyArg = Annotated[str, typer.Argument(help="License family: llama2, llama3, llama3.1, "
                                               "llama3.2, llama3.3 or llama4.", show_default=False)]


def _list(as_json: bool) -> None:
    from llamactl import licenses

    accepted = licenses.records()
    rows: list[dict[str, Any]] = []
    for family in licenses.FAMILIES.values():
        rec = accepted.get(family.id)
        rows.append({"family": family.id, "title": family.title, "url": family.url,
                     "accepted": rec is not None,
                     "accepted_at": rec.get("accepted_at") if rec else None})
    if as_json:
        output.json_doc(rows)
        return
    output.rows(["FAMILY", "LICENSE", "ACCEPTED"],
                [[r["family"], r["title"], r["accepted_at"] or "no"] for r in rows])


def register(app: Any) -> None:
    sub = app.group("license", help="Llama licenses: list, show, accept, revoke.")

    @sub.command("list", help="The Llama license families and whether each is accepted here.")
    def list_cmd(as_json: JsonOpt = False) -> None:
        _list(as_json)

    @sub.command("show", help="A license family's summary, links and acceptance record.")
    def show_cmd(family: FamilyArg, as_json: JsonOpt = False) -> None:
        from llamactl import catalog, licenses
        from llamactl.cli.fetch import summary_text

        fam = licenses.get_family(family)
        rec = licenses.records().get(fam.id)
        models = [e.name for e in catalog.load() if e.license == fam.id]
        if as_json:
            output.json_doc({"family": fam.id, "title": fam.title, "url": fam.url,
                             "use_policy": fam.policy_url, "summary": fam.summary(),
                             "catalog_models": models, "accepted": rec})
            return
        output.data(summary_text(fam.id))
        output.data("")
        output.data(f"catalog models: {', '.join(models) or 'none'}")
        output.data(f"accepted: {rec['accepted_at']} (llamactl {rec['llamactl_version']})"
                    if rec else f"accepted: no (`llamactl license accept {fam.id}`)")

    @sub.command("accept", help="Accept a license family (recorded in the config folder).")
    def accept_cmd(family: FamilyArg, as_json: JsonOpt = False) -> None:
        from llamactl import licenses
        from llamactl.cli.fetch import summary_text

        fam = licenses.get_family(family)
        if not as_json:
            output.info(summary_text(fam.id))
        record = licenses.accept(fam.id, how="license accept")
        if as_json:
            output.json_doc(record)
        else:
            output.info(f"accepted the {fam.title}")

    @sub.command("revoke", help="Forget the acceptance of a license family.")
    def revoke_cmd(family: FamilyArg) -> None:
        from llamactl import licenses

        fam = licenses.get_family(family)
        if licenses.revoke(fam.id):
            output.info(f"revoked the acceptance of the {fam.title}")
        else:
            output.info(f"the {fam.title} was not accepted; nothing to revoke")
