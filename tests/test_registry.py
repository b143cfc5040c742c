"""The local registry (`list`, `show`, `rm`): atomic writes, shared blobs, confirmation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

ONE_B = "bartowski/Llama-3.2-1B-Instruct-GGUF"

WRITER = r"""
import sys
from llamactl import registry
i = 0
while True:
    i += 1
    registry.put({"name": f"m{i % 50}", "model": "m", "tag": None, "source": "local",
                  "files": [{"filename": "x", "path": "/nowhere/" + "p" * 4000, "size": i}],
                  "path": "/nowhere", "size": i, "note": "x" * (20000 + i % 7919)})
    if i == 5:
        print("writing", flush=True)
"""


@pytest.mark.slow
def test_registry_survives_a_process_killed_mid_write(cli, isolated_home):
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER], cwd=REPO, stdout=subprocess.PIPE,
                                env=dict(os.environ))
        assert proc.stdout.readline().strip() == b"writing"
        time.sleep(0.15 + 0.1 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        path = isolated_home / "data" / "registry.json"
        doc = json.loads(path.read_text())  # never torn
        assert doc["models"]
        listed = cli("list", "--json")
        assert listed.returncode == 0, listed.err
        assert len(json.loads(listed.out)) == len(doc["models"])
    # A later write cleans up the temporary files killed writers left behind.
    from llamactl import registry

    registry.put({"name": "last", "files": [], "path": "/x", "size": 0})
    assert list((isolated_home / "data").glob(".registry.json.*.tmp")) == []


@pytest.fixture
def two_quants_sharing_a_blob(cli_here, hubsim, small_gguf, tmp_path):
    """Q4_K_M and Q8_0 with identical bytes (one blob in the HF cache), and an F16."""
    same = small_gguf(tmp_path / "same.gguf", tensor_bytes=8192)[0]
    f16 = small_gguf(tmp_path / "f16.gguf", tensor_bytes=4096 * 3)[0]
    hubsim.add_repo(ONE_B, {"Llama-3.2-1B-Instruct-Q4_K_M.gguf": same,
                            "Llama-3.2-1B-Instruct-Q8_0.gguf": same,
                            "Llama-3.2-1B-Instruct-F16.gguf": f16}, license="llama3.2")
    entries = {}
    for tag in ("q4_k_m", "q8_0", "f16"):
        proc = cli_here("pull", f"1b:{tag}", "--accept-license", "--json")
        assert proc.returncode == 0, proc.err
        entries[tag] = json.loads(proc.out)
    assert entries["q4_k_m"]["files"][0]["blob"] == entries["q8_0"]["files"][0]["blob"]
    return entries


@pytest.mark.slow
def test_list_shows_what_was_pulled(cli_here, two_quants_sharing_a_blob):
    listed = json.loads(cli_here("list", "--json").out)
    assert [e["name"] for e in listed] == ["llama3.2-1b:f16", "llama3.2-1b:q4_k_m", "llama3.2-1b:q8_0"]
    plain = cli_here("list")
    assert plain.returncode == 0
    assert plain.out.splitlines()[0].split()[:2] == ["NAME", "SIZE"]
    assert "llama3.2-1b:q8_0" in plain.out
    catalog = {e["name"]: e for e in json.loads(cli_here("models", "--json").out)}
    assert catalog["llama3.2-1b"]["on_this_machine"] == ["f16", "q4_k_m", "q8_0"]
    assert catalog["llama3.2-3b"]["on_this_machine"] == []


@pytest.mark.slow
def test_rm_keeps_a_blob_another_entry_uses(cli_here, two_quants_sharing_a_blob):
    q4, q8 = two_quants_sharing_a_blob["q4_k_m"], two_quants_sharing_a_blob["q8_0"]
    blob = Path(q4["files"][0]["blob"])
    proc = cli_here("rm", "1b:q4_k_m", "--yes")
    assert proc.returncode == 0, proc.err
    assert blob.exists()
    assert not Path(q4["path"]).is_symlink()  # its snapshot link is gone
    assert Path(q8["path"]).is_file()
    assert "keep" in proc.err and "llama3.2-1b:q8_0" in proc.err
    names = [e["name"] for e in json.loads(cli_here("list", "--json").out)]
    assert names == ["llama3.2-1b:f16", "llama3.2-1b:q8_0"]
    proc = cli_here("rm", "llama3.2-1b:q8_0", "--yes")
    assert proc.returncode == 0, proc.err
    assert not blob.exists()  # the last user is gone: the blob goes too
    repo_folder = blob.parent.parent
    assert repo_folder.exists()  # the F16 is still there
    assert cli_here("rm", "llama3.2-1b:f16", "--yes").returncode == 0
    assert not repo_folder.exists()  # nothing left of the repository in the HF cache


@pytest.mark.slow
def test_rm_refuses_to_prompt_without_a_terminal_and_dry_run_changes_nothing(cli_here, two_quants_sharing_a_blob):
    f16 = two_quants_sharing_a_blob["f16"]
    refused = cli_here("rm", "1b:f16")
    assert refused.returncode == 2
    assert "--yes" in refused.err
    dry = cli_here("rm", "1b:f16", "--dry-run", "--json")
    assert dry.returncode == 0, dry.err
    plan = json.loads(dry.out)
    assert f16["files"][0]["blob"] in plan["delete"]
    assert plan["frees_bytes"] == f16["size"]
    assert Path(f16["path"]).is_file()
    assert len(json.loads(cli_here("list", "--json").out)) == 3
    missing = cli_here("rm", "1b:q5_k_m", "--yes")
    assert missing.returncode == 4


@pytest.mark.slow
def test_show_reads_the_gguf_header(cli_here, two_quants_sharing_a_blob, small_gguf, tmp_path):
    proc = cli_here("show", "1b", "--json")
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    assert doc["architecture"] == "llama"
    assert doc["context_length"] == 2048 and doc["block_count"] == 2
    assert doc["has_chat_template"] is True
    assert doc["license_family"] == "llama3.2" and doc["license_accepted"] is True
    assert doc["registry"]["name"] == "llama3.2-1b:q4_k_m"
    text = cli_here("show", "1b")
    assert "architecture" in text.out and "llama" in text.out
    local = small_gguf(tmp_path / "loose.gguf", license="llama3.3")[0]
    loose = json.loads(cli_here("show", str(local), "--json").out)
    assert loose["license_family"] == "llama3.3"  # from general.license
    absent = cli_here("show", "scout")
    assert absent.returncode == 4
    assert "llamactl pull scout" in absent.err


@pytest.mark.slow
def test_rm_asks_on_a_terminal(two_quants_sharing_a_blob):
    pexpect = pytest.importorskip("pexpect")
    f16 = two_quants_sharing_a_blob["f16"]
    child = pexpect.spawn(sys.executable, ["-m", "llamactl", "rm", "1b:f16"], cwd=str(REPO),
                          env=dict(os.environ), timeout=60, encoding="utf-8")
    child.expect(r"Remove llama3.2-1b:f16\? \[y/N\]")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert Path(f16["path"]).is_file()
    child = pexpect.spawn(sys.executable, ["-m", "llamactl", "rm", "1b:f16"], cwd=str(REPO),
                          env=dict(os.environ), timeout=60, encoding="utf-8")
    child.expect(r"\[y/N\]")
    child.sendline("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert not Path(f16["files"][0]["blob"]).exists()


@pytest.mark.parametrize("content", ["[1, 2, 3]", '{"version": 1}', '{"models": [1, 2]}',
                                     '{"version": 1, "models": {"a": 1}}', '"models"'])
def test_registry_of_the_wrong_shape_is_an_error_naming_it_and_is_never_rewritten(content, isolated_home):
    from llamactl import registry
    from llamactl.errors import LlamactlError
    from llamactl.models.resolve import resolve

    path = isolated_home / "data" / "registry.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    for action in (registry.entries, lambda: resolve("1b", pull=False),
                   lambda: registry.put({"name": "x", "files": [], "path": "/x", "size": 0})):
        with pytest.raises(LlamactlError) as err:
            action()
        assert err.value.exit_code == 1 and str(path) in err.value.message
    assert path.read_text() == content  # not read as "no models" and written over


def test_wrong_shape_registry_through_the_cli_is_one_line_exit_1(cli_here, isolated_home):
    path = isolated_home / "data" / "registry.json"
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2, 3]")
    proc = cli_here("list")
    assert proc.returncode == 1
    assert str(path) in proc.err and "Traceback" not in proc.err
    assert path.read_text() == "[1, 2, 3]"


def test_rm_unregisters_a_file_registered_in_place_but_never_deletes_it(cli_here, small_gguf, tmp_path):
    from llamactl import registry
    from llamactl.models.remove import plan_removal

    mine = small_gguf(tmp_path / "mine.gguf")[0]
    size = mine.stat().st_size
    registry.put({"name": "mine", "model": "mine", "tag": None, "source": "local", "path": str(mine),
                  "size": size, "files": [{"filename": mine.name, "path": str(mine), "blob": None,
                                           "size": size}]})
    plan = plan_removal("mine")
    assert plan.delete == [] and plan.frees_bytes == 0
    assert [(k.path, k.used_by) for k in plan.keep] == [(mine, ["not llamactl's file"])]
    proc = cli_here("rm", "mine", "--yes")
    assert proc.returncode == 0, proc.err
    assert mine.is_file() and registry.get("mine") is None


def test_a_model_whose_files_are_gone_can_still_be_removed(cli_here, isolated_home):
    from llamactl import registry

    gone = isolated_home / "data" / "models" / "x" / "x-Q8_0.gguf"
    registry.put({"name": "x:q8_0", "model": "x", "tag": "q8_0", "source": "local", "path": str(gone),
                  "size": 10, "files": [{"filename": gone.name, "path": str(gone), "blob": None, "size": 10}]})
    shown = cli_here("show", "x:q8_0")
    assert shown.returncode == 4 and "gone" in shown.err and "llamactl rm x:q8_0" in shown.err
    proc = cli_here("rm", "x:q8_0", "--yes", "--json")
    assert proc.returncode == 0, proc.err
    assert json.loads(proc.out)["frees_bytes"] == 0
    assert registry.get("x:q8_0") is None


def test_a_vision_projector_shared_by_two_quants_goes_with_the_last_of_them(cli_here, isolated_home):
    from llamactl import paths, registry
    from llamactl.models.remove import plan_removal

    folder = paths.ensure(paths.models_dir() / "scout")
    mmproj = folder / "scout-mmproj.gguf"
    mmproj.write_bytes(b"p" * 100)
    for tag in ("q8_0", "q4_k_m"):
        path = folder / f"scout-{tag.upper()}.gguf"
        path.write_bytes(b"m" * 10)
        entry = registry.local_entry(f"scout:{tag}", "scout", tag, path)
        entry["mmproj"] = {"filename": mmproj.name, "path": str(mmproj), "blob": None, "size": 100}
        registry.put(entry)
    first = plan_removal("scout:q8_0")
    assert [(k.path, k.used_by) for k in first.keep] == [(mmproj, ["scout:q4_k_m"])]
    assert cli_here("rm", "scout:q8_0", "--yes").returncode == 0
    assert mmproj.is_file()
    last = plan_removal("scout:q4_k_m")
    assert (mmproj, 100) in last.delete and last.frees_bytes == 110
    assert cli_here("rm", "scout:q4_k_m", "--yes").returncode == 0
    assert not mmproj.exists()
