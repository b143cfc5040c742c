"""A Llama 4 pull fetches the repository's vision projector with the model (sha256, resume
and license rules of the model's files), the registry records it, `show` lists it, `chat
--image` finds it, `rm` removes it (and keeps it while another quant uses it). Against the
loopback Hub (tests/hubsim) with the tiny multimodal model's real files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.kit.llama4_vision import write_image

REPO_ID = "unsloth/Llama-4-Scout-17B-16E-Instruct-GGUF"
REF = f"hf.co/{REPO_ID}"


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def scout_repo(hubsim, llama4_vision_factory, tmp_path):
    _, model, mmproj_f32 = llama4_vision_factory("f32")
    _, _, mmproj_f16 = llama4_vision_factory("f16")
    files = {
        "Llama-4-Scout-17B-16E-Instruct-Q4_K_M.gguf": model,
        "Llama-4-Scout-17B-16E-Instruct-Q8_0.gguf": model,
        "mmproj-F32.gguf": mmproj_f32,
        "mmproj-F16.gguf": mmproj_f16,
        "mmproj-BF16.gguf": mmproj_f32,
        "mmproj-Q8_0.gguf": mmproj_f16,
        "README.md": b"# Scout GGUF\n",
    }
    hubsim.add_repo(REPO_ID, files, license="llama4")
    return {"f16": mmproj_f16, "f32": mmproj_f32}


def test_choose_projector_prefers_16_bit_projectors():
    from llamactl.hub.listing import RemoteFile, RepoListing, choose_projector

    def listing(*names):
        return RepoListing("o/r", "c" * 40, [RemoteFile(n, 10 + i, "a" * 64) for i, n in enumerate(names)], None)

    many = listing("M-Q4_K_M.gguf", "mmproj-Q8_0.gguf", "mmproj-F32.gguf", "mmproj-BF16.gguf", "mmproj-F16.gguf")
    assert choose_projector(many, "q4_k_m").filename == "mmproj-F16.gguf"
    assert choose_projector(many, "bf16").filename == "mmproj-BF16.gguf"      # the model's own precision
    assert choose_projector(many, "q4_k_m", "q8_0").filename == "mmproj-Q8_0.gguf"
    assert choose_projector(listing("M-Q4_K_M.gguf", "mmproj-Q8_0.gguf", "mmproj-F32.gguf"),
                            "q4_k_m").filename == "mmproj-F32.gguf"
    assert choose_projector(listing("M-Q4_K_M.gguf", "mmproj-model-q4_0.gguf"), "q4_k_m").filename \
        == "mmproj-model-q4_0.gguf"
    assert choose_projector(listing("M-Q4_K_M.gguf"), "q4_k_m") is None
    from llamactl.errors import NotFound

    with pytest.raises(NotFound, match="no Q2_K projector"):
        choose_projector(many, "q4_k_m", "q2_k")


@pytest.mark.slow
def test_pull_fetches_records_shows_uses_and_removes_the_projector(cli_here, cli, hubsim, scout_repo, tmp_path):
    proc = cli_here("pull", f"{REF}:Q4_K_M", "--accept-license", "--json")
    assert proc.returncode == 0, proc.err
    entry = json.loads(proc.out)
    proj = entry["mmproj"]
    assert proj["filename"] == "mmproj-F16.gguf" and sha256(proj["path"]) == sha256(scout_repo["f16"])
    assert proj["sha256"] == sha256(scout_repo["f16"])
    assert [f["filename"] for f in entry["files"]] == ["Llama-4-Scout-17B-16E-Instruct-Q4_K_M.gguf"]
    got = [r["path"] for r in hubsim.requests("GET") if "mmproj" in r["path"]]
    assert got and all("mmproj-F16.gguf" in p for p in got)    # only the chosen projector
    # a second pull: present, nothing fetched again
    n = len(hubsim.requests("GET"))
    again = cli_here("pull", f"{REF}:Q4_K_M", "--json")
    assert again.returncode == 0 and json.loads(again.out)["mmproj"]["path"] == proj["path"]
    assert not [r for r in hubsim.requests("GET")[n:] if r["path"].endswith(".gguf")]
    # show lists it
    shown = cli_here("show", entry["name"])
    assert shown.returncode == 0, shown.err
    assert "vision projector" in shown.out and proj["path"] in shown.out and "4 tokens a tile" in shown.out
    assert json.loads(cli_here("show", entry["name"], "--json").out)["mmproj"]["path"] == proj["path"]
    # chat --image takes the registered projector
    img = write_image(tmp_path / "a.png", 50, 100, seed=5)
    chat = cli("chat", entry["name"], "--image", str(img), "hi", "--json", "-n", "2", "--threads", "2")
    assert chat.returncode == 0, chat.err
    assert json.loads(chat.out)["usage"]["image_tokens"] == 12
    # the Q8_0 quant shares the projector: removing the Q4_K_M keeps it, removing both frees it
    q8 = json.loads(cli_here("pull", f"{REF}:Q8_0", "--json").out)
    assert q8["mmproj"]["blob"] == proj["blob"]
    rm = cli_here("rm", entry["name"], "--yes", "--json")
    assert rm.returncode == 0, rm.err
    assert Path(proj["blob"]).exists()
    assert cli_here("rm", q8["name"], "--yes").returncode == 0
    assert not Path(proj["blob"]).exists() and not Path(proj["path"]).exists()
    assert json.loads(cli_here("list", "--json").out) == []


@pytest.mark.slow
def test_pull_projector_choice_and_a_corrupt_projector(cli_here, hubsim, scout_repo):
    proc = cli_here("pull", f"{REF}:Q4_K_M", "--accept-license", "--mmproj", "q8_0", "--json")
    assert proc.returncode == 0, proc.err
    assert json.loads(proc.out)["mmproj"]["filename"] == "mmproj-Q8_0.gguf"
    assert cli_here("rm", f"{REF}:q4_k_m", "--yes").returncode == 0
    missing = cli_here("pull", f"{REF}:Q4_K_M", "--mmproj", "q2_k")
    assert missing.returncode == 4 and "no Q2_K projector" in missing.err and "available: bf16, f16, f32, q8_0" in missing.err
    none = json.loads(cli_here("pull", f"{REF}:Q8_0", "--mmproj", "none", "--json").out)
    assert "mmproj" not in none
    assert cli_here("rm", f"{REF}:q8_0", "--yes").returncode == 0
    # a projector served with a flipped byte: exit 7, nothing registered, no blob kept
    hubsim.corrupt.add("mmproj-F16.gguf")
    bad = cli_here("pull", f"{REF}:Q4_K_M")
    assert bad.returncode == 7 and "sha256" in bad.err, bad.err
    assert json.loads(cli_here("list", "--json").out) == []
    cache = Path(os.environ["HF_HOME"]) / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "blobs"
    assert sha256(scout_repo["f16"]) not in [p.name for p in cache.iterdir()]
    hubsim.clear_faults()
    good = cli_here("pull", f"{REF}:Q4_K_M", "--json")
    assert good.returncode == 0 and json.loads(good.out)["mmproj"]["filename"] == "mmproj-F16.gguf"


@pytest.mark.slow
def test_pull_from_safetensors_converts_the_projector_too(cli_here, hubsim, llama4_checkpoint_factory):
    ckpt = llama4_checkpoint_factory("scout", vision_kit=True)
    files = {p.name: p for p in sorted(ckpt.iterdir()) if p.is_file()}
    assert "preprocessor_config.json" in files
    hubsim.add_repo("meta-llama/Llama-4-Scout-17B-16E-Instruct", files, license="llama4")
    ref = "hf.co/meta-llama/Llama-4-Scout-17B-16E-Instruct"
    proc = cli_here("pull", ref, "--from", "safetensors", "--quant", "f32", "--accept-license", "--json")
    assert proc.returncode == 0, proc.err
    entry = json.loads(proc.out)
    proj = Path(entry["mmproj"]["path"])
    assert proj.is_file() and proj.parent == Path(entry["path"]).parent and proj.name.startswith("mmproj-")
    assert entry["mmproj"]["sha256"] == sha256(proj)
    from llamactl.engine.images import ProjectorInfo

    assert ProjectorInfo.read(proj).tokens_per_tile == 4
    assert cli_here("rm", entry["name"], "--yes").returncode == 0
    assert not proj.exists()
