"""`llamactl pull MODEL --from safetensors`: download the official (gated) checkpoint from
the loopback Hub, convert, quantize, register."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

OFFICIAL = "meta-llama/Llama-3.2-1B-Instruct"
TOKEN = "hf_tinyACCESStoken0123456789"


@pytest.fixture
def official_repo(hubsim, tiny_checkpoint):
    files: dict[str, bytes | Path] = {p.name: p for p in sorted(tiny_checkpoint.iterdir()) if p.is_file()}
    files["original/consolidated.00.pth"] = b"\0" * 4096  # Meta's own format: never fetched
    files["original/params.json"] = b"{}"
    files["LICENSE.txt"] = b"LLAMA 3.2 COMMUNITY LICENSE AGREEMENT (test copy)\n"
    hubsim.add_repo(OFFICIAL, files, license="llama3.2", gated=True)
    hubsim.tokens_with_access.add(TOKEN)
    return files


@pytest.mark.slow
def test_pull_from_safetensors_converts_quantizes_and_registers(cli_here, hubsim, official_repo):
    proc = cli_here("pull", "1b", "--from", "safetensors", "--quant", "q8_0", "--accept-license", "--json",
               env={"HF_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.err
    entry = json.loads(proc.out)
    assert entry["name"] == "llama3.2-1b:q8_0"
    assert entry["source"] == "converted" and entry["repo"] == OFFICIAL
    assert entry["license"] == "llama3.2"
    from llamactl.gguf_info import read_gguf

    info = read_gguf(entry["path"])
    assert info.architecture == "llama" and info.file_type == "Q8_0"
    assert info.has_chat_template
    # Only what conversion needs was downloaded; the intermediate GGUF is gone.
    fetched = {r["path"].split("/resolve/", 1)[1].split("/", 1)[1] for r in hubsim.requests("GET")
               if "/resolve/" in r["path"]}
    assert not any(f.startswith("original/") for f in fetched)
    assert "config.json" in fetched and any(f.endswith(".safetensors") for f in fetched)
    folder = Path(entry["path"]).parent
    assert sorted(p.name for p in folder.iterdir()) == [Path(entry["path"]).name]
    names = [e["name"] for e in json.loads(cli_here("list", "--json").out)]
    assert names == ["llama3.2-1b:q8_0"]
    # Pulled once: a second pull finds it.
    again = cli_here("pull", "1b:q8_0", "--from", "safetensors")
    assert again.returncode == 0 and "already" in again.err
    # rm deletes the converted file (it lives in llamactl's models folder).
    assert cli_here("rm", "1b:q8_0", "--yes").returncode == 0
    assert not Path(entry["path"]).exists()


@pytest.mark.slow
def test_keep_intermediate_registers_the_full_precision_gguf(cli_here, hubsim, official_repo):
    proc = cli_here("pull", "1b:q8_0", "--from", "safetensors", "--keep-intermediate", "--accept-license",
               "--json", "--quiet", env={"HF_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.err
    names = [e["name"] for e in json.loads(cli_here("list", "--json").out)]
    assert names == ["llama3.2-1b:f16", "llama3.2-1b:q8_0"]  # convert's default for a float32 source
    for e in json.loads(cli_here("list", "--json").out):
        assert Path(e["path"]).is_file()


def test_safetensors_pull_is_gated_like_any_pull(cli_here, hubsim, official_repo):
    refused = cli_here("pull", "1b", "--from", "safetensors", env={"HF_TOKEN": TOKEN})
    assert refused.returncode == 3
    assert [r for r in hubsim.log if "/resolve/" in r["path"]] == []
    no_access = cli_here("pull", "1b", "--from", "safetensors", "--accept-license")
    assert no_access.returncode == 5
    assert f"{hubsim.url}/{OFFICIAL}" in no_access.err


@pytest.mark.parametrize("args", [
    ["1b", "--quant", "q8_0"],                                # --quant without --from safetensors
    ["1b", "--from", "pytorch"],
    ["1b:q4_k_m", "--from", "safetensors", "--quant", "q8_0"],  # two different quants
    ["1b", "--from", "safetensors", "--quant", "q9_9"],
])
def test_bad_flag_combinations_are_usage_errors_before_any_request(cli_here, hubsim, args):
    proc = cli_here("pull", *args)
    assert proc.returncode == 2, proc.err
    assert hubsim.log == []
