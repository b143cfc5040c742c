"""`llamactl pull` against the loopback Hub (tests/hubsim): the real huggingface_hub client,
the real CLI (in this process; in a subprocess where a signal, a second process or the
token file huggingface_hub locates at import is involved)."""

from __future__ import annotations

import hashlib
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


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def gguf_gets(hubsim, name: str = ".gguf") -> list[dict]:
    return [r for r in hubsim.requests("GET") if r["path"].endswith(name)]


def weight_requests(hubsim) -> list[dict]:
    return [r for r in hubsim.log if "/resolve/" in r["path"] and r["path"].endswith(".gguf")]


@pytest.fixture
def one_b(hubsim, small_gguf, tmp_path):
    """The 1B catalog model's GGUF repository with two quants of different content."""
    q4 = small_gguf(tmp_path / "src" / "q4.gguf", tensor_bytes=8192, license="llama3.2")[0]
    q8 = small_gguf(tmp_path / "src" / "q8.gguf", tensor_bytes=16384, license="llama3.2")[0]
    hubsim.add_repo(ONE_B, {
        "Llama-3.2-1B-Instruct-Q4_K_M.gguf": q4,
        "Llama-3.2-1B-Instruct-Q8_0.gguf": q8,
        "README.md": b"# Llama 3.2 1B Instruct GGUF\n",
        "LICENSE.txt": b"LLAMA 3.2 COMMUNITY LICENSE AGREEMENT (test copy)\n",
    }, license="llama3.2")
    return {"q4": q4, "q8": q8}


def test_pull_without_accepted_license_exits_3_before_any_weight_request(cli_here, hubsim, one_b):
    proc = cli_here("pull", "1b")
    assert proc.returncode == 3, proc.err
    assert "--accept-license" in proc.err
    assert "llamactl license accept llama3.2" in proc.err
    assert proc.out == ""
    assert weight_requests(hubsim) == []  # no HEAD, no GET of any .gguf
    assert json.loads(cli_here("list", "--json").out) == []


def test_pull_by_alias_with_accept_license_registers_a_verified_file(cli_here, hubsim, one_b):
    proc = cli_here("pull", "1b", "--accept-license", "--json")
    assert proc.returncode == 0, proc.err
    entry = json.loads(proc.out)
    assert entry["name"] == "llama3.2-1b:q4_k_m"
    assert entry["repo"] == ONE_B
    assert entry["license"] == "llama3.2"
    path = Path(entry["path"])
    assert sha256(path) == sha256(one_b["q4"]) == entry["files"][0]["sha256"]
    # In the Hugging Face cache layout, shared with other HF tools.
    assert path.is_symlink()
    assert path.resolve() == Path(entry["files"][0]["blob"]).resolve()
    assert path.resolve().name == entry["files"][0]["sha256"]
    assert "models--bartowski--Llama-3.2-1B-Instruct-GGUF" in str(path)
    # The acceptance was recorded.
    licenses = json.loads(cli_here("license", "list", "--json").out)
    assert {r["family"]: r["accepted"] for r in licenses}["llama3.2"] is True
    # The same model again: no network at all, same path printed.
    before = len(hubsim.log)
    again = cli_here("pull", "llama3.2-1b")
    assert again.returncode == 0, again.err
    assert again.out.strip() == str(path)
    assert "already" in again.err
    assert len(hubsim.log) == before


def test_pull_plain_output_is_the_path_and_quiet_is_silent(cli_here, hubsim, one_b):
    proc = cli_here("pull", "1b", "--accept-license", "--quiet")
    assert proc.returncode == 0, proc.err
    assert proc.err == ""
    assert Path(proc.out.strip()).is_file()


def test_license_accept_command_opens_the_gate(cli_here, hubsim, one_b):
    assert cli_here("license", "accept", "llama3.2").returncode == 0
    proc = cli_here("pull", "1b")
    assert proc.returncode == 0, proc.err
    assert "downloading" in proc.err  # a plain line per file when stderr is not a terminal


def test_pull_hf_reference_with_a_tag_in_any_case(cli_here, hubsim, one_b):
    proc = cli_here("pull", f"hf.co/{ONE_B}:Q8_0", "--accept-license", "--json")
    assert proc.returncode == 0, proc.err
    entry = json.loads(proc.out)
    assert entry["name"] == f"hf.co/{ONE_B}:q8_0"
    assert sha256(Path(entry["path"])) == sha256(one_b["q8"])


def test_unknown_tag_lists_the_quants_the_repository_has(cli_here, hubsim, one_b):
    proc = cli_here("pull", f"hf.co/{ONE_B}:q5_k_m", "--accept-license")
    assert proc.returncode == 4
    assert "q4_k_m" in proc.err and "q8_0" in proc.err
    assert weight_requests(hubsim) == []


def test_bare_repository_without_q4_k_m_is_an_error_listing_its_quants(cli_here, hubsim, small_gguf, tmp_path):
    f = small_gguf(tmp_path / "a.gguf")[0]
    hubsim.add_repo("someone/Other-GGUF", {"Other-Q8_0.gguf": f, "Other-F16.gguf": f})
    proc = cli_here("pull", "hf.co/someone/Other-GGUF")
    assert proc.returncode == 4
    assert "q8_0" in proc.err and "f16" in proc.err
    ok = cli_here("pull", "hf://someone/Other-GGUF/Other-F16.gguf", "--json")
    assert ok.returncode == 0, ok.err
    assert json.loads(ok.out)["name"] == "hf.co/someone/Other-GGUF:f16"


def test_split_files_in_a_subfolder_from_the_second_source(cli_here, hubsim, small_gguf, tmp_path):
    # Scout's first GGUF source (ggml-org) is absent here: the catalog falls back to unsloth.
    parts = small_gguf(tmp_path / "split" / "Scout-UD-Q4_K_XL.gguf", split=3, license="llama4")
    files = {f"UD-Q4_K_XL/Llama-4-Scout-17B-16E-Instruct-UD-Q4_K_XL-{i + 1:05d}-of-00003.gguf": p
             for i, p in enumerate(parts)}
    other = small_gguf(tmp_path / "x.gguf")[0]
    files["Llama-4-Scout-17B-16E-Instruct-Q8_0.gguf"] = other
    hubsim.add_repo("unsloth/Llama-4-Scout-17B-16E-Instruct-GGUF", files, license="other")
    proc = cli_here("pull", "scout:UD-Q4_K_XL", "--accept-license", "--json")
    assert proc.returncode == 0, proc.err
    entry = json.loads(proc.out)
    assert entry["name"] == "llama4-scout:ud-q4_k_xl"
    assert entry["license"] == "llama4"  # from the catalog, though the repo says "other"
    assert [f["filename"] for f in entry["files"]] == sorted(k for k in files if "UD-" in k)
    for f, src in zip(entry["files"], parts):
        assert sha256(Path(f["path"])) == sha256(src)
    assert entry["path"].endswith("-00001-of-00003.gguf")
    assert len(gguf_gets(hubsim, "-of-00003.gguf")) == 3
    # show reads the header of every part through the registered name.
    show = cli_here("show", "scout:ud-q4_k_xl", "--json")
    assert show.returncode == 0, show.err
    doc = json.loads(show.out)
    assert len(doc["paths"]) == 3 and doc["license_family"] == "llama4"


@pytest.mark.slow
def test_gated_repository_is_exit_5_and_never_shows_the_token(cli, hubsim, one_b, small_gguf, tmp_path):
    f = small_gguf(tmp_path / "g.gguf")[0]
    hubsim.add_repo("meta-llama/Gated-GGUF", {"Gated-Q4_K_M.gguf": f}, license="llama3.2", gated=True)
    assert cli("license", "accept", "llama3.2").returncode == 0
    anon = cli("pull", "hf.co/meta-llama/Gated-GGUF")
    assert anon.returncode == 5, anon.err
    assert f"{hubsim.url}/meta-llama/Gated-GGUF" in anon.err
    assert "hf auth login" in anon.err and "HF_TOKEN" in anon.err
    secret = "hf_NOACCESSsecret0123456789"
    denied = cli("pull", "hf.co/meta-llama/Gated-GGUF", env={"HF_TOKEN": secret})
    assert denied.returncode == 5
    assert secret not in denied.err + denied.out
    good = "hf_GOODsecret0123456789"
    hubsim.tokens_with_access.add(good)
    ok = cli("pull", "hf.co/meta-llama/Gated-GGUF", env={"HF_TOKEN": good})
    assert ok.returncode == 0, ok.err
    assert good not in ok.err + ok.out
    assert any(r["auth"] for r in gguf_gets(hubsim, "Gated-Q4_K_M.gguf"))
    # The token saved by `hf auth login` (HF_HOME/token) works as well.
    assert cli("rm", "hf.co/meta-llama/Gated-GGUF", "--yes").returncode == 0
    (Path(os.environ["HF_HOME"]) / "token").write_text(good)
    saved = cli("pull", "hf.co/meta-llama/Gated-GGUF")
    assert saved.returncode == 0, saved.err
    assert good not in saved.err + saved.out


def test_corrupted_download_exits_7_registers_nothing_and_a_later_pull_succeeds(cli_here, hubsim, one_b):
    hubsim.corrupt.add("Llama-3.2-1B-Instruct-Q4_K_M.gguf")
    proc = cli_here("pull", "1b", "--accept-license")
    assert proc.returncode == 7, proc.err
    assert "sha256" in proc.err
    assert json.loads(cli_here("list", "--json").out) == []
    cache = Path(os.environ["HF_HOME"]) / "hub" / "models--bartowski--Llama-3.2-1B-Instruct-GGUF"
    assert list((cache / "blobs").iterdir()) == []  # neither the bad blob nor a partial file
    hubsim.clear_faults()
    again = cli_here("pull", "1b", "--json")
    assert again.returncode == 0, again.err
    assert sha256(Path(json.loads(again.out)["path"])) == sha256(one_b["q4"])


def test_tampered_cache_file_is_found_deleted_and_fetched_again(cli_here, hubsim, one_b):
    first = json.loads(cli_here("pull", "1b", "--accept-license", "--json").out)
    blob = Path(first["files"][0]["blob"])
    # Another tool left a bad copy of the Q8 blob in the shared cache.
    q8_sha = sha256(one_b["q8"])
    bad = blob.parent / q8_sha
    bad.write_bytes(b"\0" * one_b["q8"].stat().st_size)
    proc = cli_here("pull", "1b:q8_0")
    assert proc.returncode == 7, proc.err
    assert not bad.exists()
    ok = cli_here("pull", "1b:q8_0", "--json")
    assert ok.returncode == 0, ok.err
    assert sha256(Path(json.loads(ok.out)["path"])) == q8_sha


def test_not_enough_disk_space_exits_8_before_the_first_byte(cli_here, hubsim, one_b):
    proc = cli_here("pull", "1b", "--accept-license", env={"LLAMACTL_FAKE_FREE_BYTES": "1000"})
    assert proc.returncode == 8, proc.err
    assert "needs" in proc.err and "free" in proc.err
    assert gguf_gets(hubsim) == []
    assert json.loads(cli_here("list", "--json").out) == []


def test_revision_is_honoured_and_a_bad_one_is_exit_4(cli_here, hubsim, one_b):
    commit = hubsim.repos[ONE_B].commit
    proc = cli_here("pull", "1b", "--accept-license", "--revision", commit, "--json")
    assert proc.returncode == 0, proc.err
    assert json.loads(proc.out)["revision"] == commit
    bad = cli_here("pull", "1b", "--revision", "no-such-branch")
    assert bad.returncode == 4


def _partial(blobs: Path) -> Path | None:
    found = list(blobs.glob("*.incomplete")) if blobs.exists() else []
    return found[0] if found else None


@pytest.mark.slow
def test_pull_killed_mid_download_resumes_with_a_range_request(cli, hubsim, big_gguf, tmp_path):
    hubsim.add_repo(ONE_B, {"Llama-3.2-1B-Instruct-Q4_K_M.gguf": big_gguf}, license="llama3.2")
    name = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
    size = big_gguf.stat().st_size
    hubsim.slow[name] = (10 * 1024 * 1024 + 256 * 1024, 256 * 1024)  # crawl after 10.25 MiB
    blobs = Path(os.environ["HF_HOME"]) / "hub" / "models--bartowski--Llama-3.2-1B-Instruct-GGUF" / "blobs"
    proc = subprocess.Popen([sys.executable, "-m", "llamactl", "pull", "1b", "--accept-license"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            part = _partial(blobs)
            if part is not None and part.stat().st_size >= 10 * 1024 * 1024:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the first pull never wrote 10 MiB")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    kept = _partial(blobs)
    assert kept is not None and kept.stat().st_size == 10 * 1024 * 1024  # one 10 MiB chunk written
    hubsim.clear_faults()
    first_gets = len(gguf_gets(hubsim))
    again = cli("pull", "1b", "--json")
    assert again.returncode == 0, again.err
    resumed = gguf_gets(hubsim)[first_gets:]
    assert len(resumed) == 1
    assert resumed[0]["range"] == "bytes=10485760-"  # continues; does not start over
    entry = json.loads(again.out)
    assert sha256(Path(entry["path"])) == sha256(big_gguf)
    assert Path(entry["path"]).stat().st_size == size
    assert _partial(blobs) is None


@pytest.mark.slow
def test_pull_after_a_dropped_connection_continues_from_where_it_stopped(cli_here, hubsim, big_gguf):
    name = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
    hubsim.add_repo(ONE_B, {name: big_gguf}, license="llama3.2")
    hubsim.cut_after[name] = 11 * 1024 * 1024
    hubsim.fail_after_cut[name] = 100  # the connection stays broken for this process
    proc = cli_here("pull", "1b", "--accept-license")
    assert proc.returncode == 6, proc.err
    assert "again" in proc.err
    hubsim.clear_faults()
    before = len(gguf_gets(hubsim))
    again = cli_here("pull", "1b", "--json")
    assert again.returncode == 0, again.err
    gets = gguf_gets(hubsim)[before:]
    assert [g["range"] for g in gets] == ["bytes=10485760-"]  # not the whole file again
    assert sha256(Path(json.loads(again.out)["path"])) == sha256(big_gguf)


@pytest.mark.slow
def test_two_concurrent_pulls_download_once_and_both_succeed(hubsim, small_gguf, tmp_path):
    src = small_gguf(tmp_path / "c.gguf", tensor_bytes=1 << 20, license="llama3.2")[0]
    name = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
    hubsim.add_repo(ONE_B, {name: src}, license="llama3.2")
    hubsim.slow[name] = (0, 512 * 1024)  # about 2 s for the file
    cmd = [sys.executable, "-m", "llamactl", "pull", "1b", "--accept-license", "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
    paths = {json.loads(out)["path"] for out, _ in outs}
    assert len(paths) == 1
    assert sha256(Path(paths.pop())) == sha256(src)
    assert len(gguf_gets(hubsim, name)) == 1  # one downloaded; the other waited and found it
    registry = json.loads(subprocess.run([sys.executable, "-m", "llamactl", "list", "--json"],
                                         capture_output=True, cwd=REPO).stdout)
    assert [e["name"] for e in registry] == ["llama3.2-1b:q4_k_m"]


def test_resolve_paths_registered_models_and_the_gate(hubsim, one_b, tmp_path):
    from llamactl.errors import LicenseNotAccepted, NotFound
    from llamactl.models.resolve import resolve

    local = tmp_path / "here.gguf"
    local.write_bytes(one_b["q4"].read_bytes())
    loose = resolve(str(local))
    assert loose.path == local and loose.entry is None and loose.status == "file"
    with pytest.raises(NotFound):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(NotFound) as absent:  # pull=False: never the network
        resolve("llama3.2-1b", pull=False)
    assert "llamactl pull llama3.2-1b" in absent.value.hint
    with pytest.raises(LicenseNotAccepted) as exc:  # no confirm callback: no prompt
        resolve("llama3.2-1b")
    assert exc.value.exit_code == 3
    assert weight_requests(hubsim) == []
    pulled = resolve("llama3.2-1b", accept_license=True)
    assert pulled.status == "pulled" and pulled.pulled
    assert pulled.name == "llama3.2-1b:q4_k_m" and pulled.license == "llama3.2"
    assert sha256(pulled.path) == sha256(one_b["q4"])
    before = len(hubsim.log)
    for ref in ("1b", "llama3.2-1b", "llama3.2-1b:q4_k_m", "LLAMA3.2-1B:Q4_K_M"):
        found = resolve(ref)
        assert (found.path, found.status, found.entry) == (pulled.path, "registered", pulled.entry), ref
    assert len(hubsim.log) == before  # registered: no network


def test_resolve_reads_the_registry_once_and_parses_once(hubsim, one_b, monkeypatch):
    from llamactl import refs, registry
    from llamactl.models.resolve import resolve

    resolve("1b", accept_license=True)
    reads, parses = [], []
    real_read, real_parse = registry.read, refs.parse
    monkeypatch.setattr(registry, "read", lambda: reads.append(1) or real_read())
    monkeypatch.setattr(refs, "parse", lambda text: parses.append(text) or real_parse(text))
    assert resolve("1b").name == "llama3.2-1b:q4_k_m"
    assert (len(reads), parses) == (1, ["1b"])
    reads.clear(), parses.clear()
    assert resolve("llama3.2-1b:q4_k_m").status == "registered"
    assert (len(reads), parses) == (1, [])  # a registered name is not parsed at all


def test_a_registered_hub_model_whose_file_is_gone_is_pulled_again(hubsim, one_b):
    from llamactl.errors import NotFound
    from llamactl.models.resolve import resolve

    first = resolve("1b", accept_license=True)
    os.unlink(first.entry["files"][0]["blob"])
    with pytest.raises(NotFound) as gone:
        resolve("1b", pull=False)
    assert "gone" in gone.value.message and "llamactl rm llama3.2-1b:q4_k_m" in gone.value.hint
    again = resolve("llama3.2-1b:q4_k_m")
    assert again.status == "pulled" and sha256(again.path) == sha256(one_b["q4"])


def test_gguf_general_license_gates_a_repository_without_a_license_tag(cli_here, hubsim, small_gguf, tmp_path):
    f = small_gguf(tmp_path / "n.gguf", license="Llama 3.3 Community License")[0]
    hubsim.add_repo("someone/Untagged-GGUF", {"Untagged-Q4_K_M.gguf": f})  # no license tag
    refused = cli_here("pull", "hf.co/someone/Untagged-GGUF")
    assert refused.returncode == 3, refused.err
    assert "llamactl license accept llama3.3" in refused.err
    assert json.loads(cli_here("list", "--json").out) == []  # not registered
    ok = cli_here("pull", "hf.co/someone/Untagged-GGUF", "--accept-license", "--json")
    assert ok.returncode == 0, ok.err
    assert json.loads(ok.out)["license"] == "llama3.3"


def test_offline_or_unreachable_hub_is_exit_6(cli_here, one_b, hubsim):
    offline = cli_here("pull", "1b", "--accept-license", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 6
    assert "HF_HUB_OFFLINE" in offline.err
    url = hubsim.url
    hubsim.stop()
    down = cli_here("pull", "1b", "--accept-license", env={"HF_ENDPOINT": url})
    assert down.returncode == 6, down.err
    assert "Traceback" not in down.err


@pytest.mark.slow
def test_ctrl_c_mid_download_exits_130_and_the_next_pull_resumes(cli, hubsim, big_gguf):
    name = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
    hubsim.add_repo(ONE_B, {name: big_gguf}, license="llama3.2")
    hubsim.slow[name] = (10 * 1024 * 1024 + 256 * 1024, 256 * 1024)
    blobs = Path(os.environ["HF_HOME"]) / "hub" / "models--bartowski--Llama-3.2-1B-Instruct-GGUF" / "blobs"
    proc = subprocess.Popen([sys.executable, "-m", "llamactl", "pull", "1b", "--accept-license"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        part = _partial(blobs)
        if part is not None and part.stat().st_size >= 10 * 1024 * 1024:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert out == b""
    assert json.loads(cli("list", "--json").out) == []
    hubsim.clear_faults()
    before = len(gguf_gets(hubsim))
    again = cli("pull", "1b")
    assert again.returncode == 0, again.err
    assert [g["range"] for g in gguf_gets(hubsim)[before:]] == ["bytes=10485760-"]


def test_files_behind_a_cdn_redirect_are_fetched_without_the_token(cli_here, hubsim, one_b):
    hubsim.redirect_lfs = True  # as on the Hub: LFS files answer 302 to a signed URL elsewhere
    token = "hf_REDIRECTsecret0123456789"
    proc = cli_here("pull", "1b", "--accept-license", "--json", env={"HF_TOKEN": token})
    assert proc.returncode == 0, proc.err
    assert sha256(Path(json.loads(proc.out)["path"])) == sha256(one_b["q4"])
    cdn = [r for r in hubsim.log if r["path"].startswith("/cdn/")]
    assert [r["method"] for r in cdn] == ["GET"]
    assert not cdn[0]["auth"]  # the token never leaves the Hub's own host
    assert all(r["auth"] for r in hubsim.log if "/resolve/" in r["path"])


@pytest.mark.slow
def test_resume_through_a_cdn_redirect(cli_here, hubsim, big_gguf):
    name = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
    hubsim.add_repo(ONE_B, {name: big_gguf}, license="llama3.2")
    hubsim.redirect_lfs = True
    hubsim.cut_after[name] = 11 * 1024 * 1024
    hubsim.fail_after_cut[name] = 100
    assert cli_here("pull", "1b", "--accept-license").returncode == 6
    hubsim.clear_faults()
    before = len(hubsim.log)
    again = cli_here("pull", "1b", "--json")
    assert again.returncode == 0, again.err
    gets = [r for r in hubsim.log[before:] if r["method"] == "GET" and r["path"].startswith("/cdn/")]
    assert [g["range"] for g in gets] == ["bytes=10485760-"]
    assert sha256(Path(json.loads(again.out)["path"])) == sha256(big_gguf)


def test_pulled_files_are_found_by_other_hugging_face_tools(cli_here, hubsim, one_b):
    entry = json.loads(cli_here("pull", "1b", "--accept-license", "--json").out)
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    cache = Path(os.environ["HF_HOME"]) / "hub"
    found = try_to_load_from_cache(ONE_B, "Llama-3.2-1B-Instruct-Q4_K_M.gguf", cache_dir=str(cache))
    assert found is not None and Path(found) == Path(entry["path"])  # via refs/main
    repos = {r.repo_id: r for r in scan_cache_dir(cache).repos}
    assert repos[ONE_B].size_on_disk == one_b["q4"].stat().st_size
    # And huggingface_hub, offline, is served from the same file instead of downloading.
    code = ("import sys; from huggingface_hub import hf_hub_download; "
            f"print(hf_hub_download({ONE_B!r}, 'Llama-3.2-1B-Instruct-Q4_K_M.gguf'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == Path(entry["path"])


@pytest.mark.slow
def test_resume_when_the_server_ignores_the_range_starts_over_and_still_verifies(cli_here, hubsim, big_gguf):
    name = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
    hubsim.add_repo(ONE_B, {name: big_gguf}, license="llama3.2")
    hubsim.cut_after[name] = 11 * 1024 * 1024
    hubsim.fail_after_cut[name] = 100
    assert cli_here("pull", "1b", "--accept-license").returncode == 6
    hubsim.clear_faults()
    hubsim.ignore_range = True
    again = cli_here("pull", "1b", "--json")
    assert again.returncode == 0, again.err
    path = Path(json.loads(again.out)["path"])
    assert path.stat().st_size == big_gguf.stat().st_size  # not the old prefix plus the whole file
    assert sha256(path) == sha256(big_gguf)
