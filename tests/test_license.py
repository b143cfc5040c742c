"""License families, acceptance records, and the interactive gate."""

from __future__ import annotations

import json
import os
import sys

import pytest

from llamactl import licenses
from tests.conftest import REPO


@pytest.mark.parametrize("text,family", [
    ("llama3.2", "llama3.2"), ("llama3_3", "llama3.3"), ("llama4", "llama4"), ("llama2", "llama2"),
    ("Llama 3.2 Community License Agreement", "llama3.2"),
    ("https://www.llama.com/llama3_1/license/", "llama3.1"),
    ("llama3", "llama3"), ("apache-2.0", None), ("mit", None), (None, None),
])
def test_license_family_from_hub_tags_and_gguf_metadata(text, family):
    assert licenses.normalize(text) == family


def test_family_from_hub_uses_the_license_tag_then_tags():
    assert licenses.family_from_hub("other", None, ["gguf", "license:llama3.3"]) == "llama3.3"
    assert licenses.family_from_hub("llama4", None, []) == "llama4"
    assert licenses.family_from_hub("apache-2.0", None, ["license:apache-2.0"]) is None


def test_summary_is_llamactls_own_words_and_covers_the_terms():
    text = " ".join(licenses.get_family("llama4").summary())
    for needle in ("Built with Llama", "\"Llama\" at the start", "700 million",
                   "European Union", "Acceptable Use Policy"):
        assert needle in text
    assert "European Union" not in " ".join(licenses.get_family("llama3.3").summary())


def test_accept_show_list_revoke(cli_here, isolated_home):
    shown = json.loads(cli_here("license", "show", "llama4", "--json").out)
    assert shown["accepted"] is None
    assert shown["catalog_models"] == ["llama4-maverick", "llama4-scout"]
    proc = cli_here("license", "accept", "llama4", "--json")
    assert proc.returncode == 0, proc.err
    record = json.loads(proc.out)
    assert record["family"] == "llama4" and record["llamactl_version"] and record["accepted_at"]
    stored = json.loads((isolated_home / "config" / "licenses.json").read_text())
    assert "llama4" in stored["accepted"]
    rows = {r["family"]: r for r in json.loads(cli_here("license", "list", "--json").out)}
    assert rows["llama4"]["accepted"] and not rows["llama3.2"]["accepted"]
    shown = cli_here("license", "show", "llama4")
    assert "Built with Llama" in shown.out and "accepted: 20" in shown.out
    assert cli_here("license", "revoke", "llama4").returncode == 0
    assert json.loads(cli_here("license", "show", "llama4", "--json").out)["accepted"] is None
    unknown = cli_here("license", "accept", "llama9")
    assert unknown.returncode == 4
    assert "llama3.2" in unknown.err


def test_revoked_license_closes_the_gate_again(cli_here, hubsim, small_gguf, tmp_path):
    f = small_gguf(tmp_path / "m.gguf")[0]
    hubsim.add_repo("bartowski/Llama-3.2-3B-Instruct-GGUF", {"Llama-3.2-3B-Instruct-Q4_K_M.gguf": f},
                    license="llama3.2")
    cli_here("license", "accept", "llama3.2")
    cli_here("license", "revoke", "llama3.2")
    assert cli_here("pull", "3b").returncode == 3


def test_hub_license_tag_gates_a_repository_outside_the_catalog(cli_here, hubsim, small_gguf, tmp_path):
    f = small_gguf(tmp_path / "m.gguf")[0]
    hubsim.add_repo("someone/Finetune-GGUF", {"Finetune-Q4_K_M.gguf": f}, license="llama3.3")
    hubsim.add_repo("someone/Apache-GGUF", {"Apache-Q4_K_M.gguf": f}, license="apache-2.0")
    gated = cli_here("pull", "hf.co/someone/Finetune-GGUF")
    assert gated.returncode == 3
    assert "llamactl license accept llama3.3" in gated.err
    free = cli_here("pull", "hf.co/someone/Apache-GGUF")
    assert free.returncode == 0, free.err


@pytest.mark.slow
def test_interactive_prompt_shows_the_summary_and_the_text_then_accepts(hubsim, small_gguf, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    f = small_gguf(tmp_path / "m.gguf")[0]
    license_text = b"LLAMA 3.2 COMMUNITY LICENSE AGREEMENT - test copy\n"
    hubsim.add_repo("bartowski/Llama-3.2-1B-Instruct-GGUF",
                    {"Llama-3.2-1B-Instruct-Q4_K_M.gguf": f, "Llama-3.2-1B-Instruct-Q8_0.gguf": f,
                     "LICENSE.txt": license_text},
                    license="llama3.2")
    env = dict(os.environ, PAGER="cat", COLUMNS="200")
    child = pexpect.spawn(sys.executable, ["-m", "llamactl", "pull", "1b"], cwd=str(REPO), env=env,
                          timeout=60, encoding="utf-8")
    child.expect("Built with Llama")
    child.expect("700 million")
    child.expect("COMMUNITY LICENSE AGREEMENT - test copy")
    child.expect("Type 'yes'")
    child.sendline("yes")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    record = licenses.records()["llama3.2"]
    assert record["how"] == "prompt"
    assert record["text_sha256"] and len(record["text_sha256"]) == 64

    # Answering anything else stops before any weights.
    licenses.revoke("llama3.2")
    child = pexpect.spawn(sys.executable, ["-m", "llamactl", "pull", "1b:q8_0"], cwd=str(REPO),
                          env=env, timeout=60, encoding="utf-8")
    child.expect("Type 'yes'")
    child.sendline("no")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3
    assert [r for r in hubsim.log if r["path"].endswith("Q8_0.gguf")] == []
    assert "llama3.2" not in licenses.records()


def test_a_license_record_of_the_wrong_shape_is_an_error_naming_it_and_is_kept(cli_here, isolated_home):
    path = isolated_home / "config" / "licenses.json"
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2, 3]")
    for args in (("license", "list"), ("license", "accept", "llama4")):
        proc = cli_here(*args)
        assert proc.returncode == 1 and str(path) in proc.err, proc.err
    assert path.read_text() == "[1, 2, 3]"
