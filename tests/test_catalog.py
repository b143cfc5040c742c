"""The catalog (`llamactl models`), model references, and choosing files by quant tag."""

from __future__ import annotations

import json

import pytest

from llamactl import catalog, refs
from llamactl.errors import NotFound, UsageError
from llamactl.hub.listing import RemoteFile, RepoListing, choose_files, files_for_path, quant_of

EXPECTED = {
    "llama4-maverick": (["maverick"], "meta-llama/Llama-4-Maverick-17B-128E-Instruct",
                        ["unsloth/Llama-4-Maverick-17B-128E-Instruct-GGUF"], "llama4"),
    "llama4-scout": (["scout"], "meta-llama/Llama-4-Scout-17B-16E-Instruct",
                     ["ggml-org/Llama-4-Scout-17B-16E-Instruct-GGUF",
                      "unsloth/Llama-4-Scout-17B-16E-Instruct-GGUF",
                      "bartowski/meta-llama_Llama-4-Scout-17B-16E-Instruct-GGUF"], "llama4"),
    "llama3.3-70b": (["70b", "llama3.3"], "meta-llama/Llama-3.3-70B-Instruct",
                     ["bartowski/Llama-3.3-70B-Instruct-GGUF"], "llama3.3"),
    "llama3.2-3b": (["3b"], "meta-llama/Llama-3.2-3B-Instruct",
                    ["bartowski/Llama-3.2-3B-Instruct-GGUF"], "llama3.2"),
    "llama3.2-1b": (["1b", "llama3.2"], "meta-llama/Llama-3.2-1B-Instruct",
                    ["bartowski/Llama-3.2-1B-Instruct-GGUF"], "llama3.2"),
}


def test_models_json_lists_the_five_models_with_their_sources(cli_here):
    proc = cli_here("models", "--json")
    assert proc.returncode == 0, proc.err
    doc = {e["name"]: e for e in json.loads(proc.out)}
    assert set(doc) == set(EXPECTED)
    for name, (aliases, official, ggufs, family) in EXPECTED.items():
        e = doc[name]
        assert (e["aliases"], e["official_repo"], e["gguf_repos"], e["license"]) == (aliases, official, ggufs, family)
        assert e["default_tag"] == "q4_k_m"
    assert doc["llama4-maverick"]["experts"] == 128 and doc["llama4-scout"]["experts"] == 16
    assert doc["llama4-scout"]["context_length"] == 10 * 1024 * 1024
    plain = cli_here("models")
    assert "llama4-scout" in plain.out and "10M" in plain.out
    assert "…" not in plain.out  # piped: nothing truncated


def test_user_entries_add_and_replace_models(cli_here, isolated_home):
    cfg = isolated_home / "config"
    cfg.mkdir(parents=True)
    (cfg / "catalog.json").write_text(json.dumps({"models": [
        {"name": "my-llama", "aliases": ["mine"], "gguf_repos": ["me/My-Llama-GGUF"],
         "license": "llama3.1", "default_tag": "Q8_0"},
        {"name": "llama3.2-1b", "aliases": ["1b"], "gguf_repos": ["mirror/Llama-3.2-1B-GGUF"],
         "license": "llama3.2"},
    ]}))
    doc = {e["name"]: e for e in json.loads(cli_here("models", "--json").out)}
    assert doc["my-llama"]["default_tag"] == "q8_0" and doc["my-llama"]["source"] == "user"
    assert doc["llama3.2-1b"]["gguf_repos"] == ["mirror/Llama-3.2-1B-GGUF"]
    assert len(doc) == 6
    ref = refs.parse("mine")
    assert ref.entry.name == "my-llama" and ref.with_tag(ref.tag or ref.default_tag) == "my-llama:q8_0"
    (cfg / "catalog.json").write_text('{"models": [{"name": "x", "colour": "red"}]}')
    bad = cli_here("models")
    assert bad.returncode == 1
    assert "colour" in bad.err and "Traceback" not in bad.err


def test_references_parse():
    r = refs.parse("scout:UD-Q4_K_XL")
    assert (r.kind, r.entry.name, r.tag) == ("catalog", "llama4-scout", "ud-q4_k_xl")
    assert refs.parse("LLAMA3.2").entry.name == "llama3.2-1b"
    assert refs.parse("70b").entry.name == "llama3.3-70b"
    r = refs.parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0")
    assert (r.kind, r.repo, r.tag) == ("hf", "bartowski/Llama-3.2-1B-Instruct-GGUF", "q8_0")
    assert r.with_tag(r.tag) == "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:q8_0"
    r = refs.parse("hf://unsloth/X-GGUF/UD-Q4_K_XL/X-UD-Q4_K_XL-00001-of-00002.gguf")
    assert (r.repo, r.filename) == ("unsloth/X-GGUF", "UD-Q4_K_XL/X-UD-Q4_K_XL-00001-of-00002.gguf")
    assert refs.parse("hf://owner/repo").filename is None
    assert refs.parse("./models/a.gguf").kind == "path"
    assert refs.parse("/abs/b.GGUF").kind == "path"
    with pytest.raises(NotFound):
        refs.parse("llama9")
    for bad in ("", "hf.co/onlyowner", "1b:", "hf://owner/repo/README.md"):
        with pytest.raises(UsageError):
            refs.parse(bad)


@pytest.mark.parametrize("name,label", [
    ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
    ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
    ("Llama-3.2-1B-Instruct-f16.gguf", "F16"),
    ("Llama-3.3-70B-Instruct-Q8_0/Llama-3.3-70B-Instruct-Q8_0-00001-of-00002.gguf", "Q8_0"),
    ("UD-Q4_K_XL/Llama-4-Scout-17B-16E-Instruct-UD-Q4_K_XL-00002-of-00002.gguf", "UD-Q4_K_XL"),
    ("Llama-4-Scout-17B-16E-Instruct-BF16.gguf", "BF16"),
    ("README.md", None),
    ("Llama-3.2-1B-Instruct.gguf", None),
])
def test_quant_label_of_a_file_name(name, label):
    assert quant_of(name) == label


def _listing(*names: str) -> RepoListing:
    return RepoListing(repo="o/r", commit="c" * 40, license_family=None,
                       files=[RemoteFile(n, 10, sha256="0" * 64) for n in names])


def test_choosing_files_by_tag():
    listing = _listing(
        "M-Q4_K_M.gguf", "M-UD-Q4_K_XL.gguf", "mmproj-M-F16.gguf", "M-Q4_K.gguf",
        "Q8_0/M-Q8_0-00002-of-00002.gguf", "Q8_0/M-Q8_0-00001-of-00002.gguf",
        "BF16/M-BF16-00001-of-00003.gguf", "BF16/M-BF16-00003-of-00003.gguf",
    )
    assert [f.filename for f in choose_files(listing, "q4_k_m")[1]] == ["M-Q4_K_M.gguf"]
    assert [f.filename for f in choose_files(listing, "Q4_K")[1]] == ["M-Q4_K.gguf"]
    assert [f.filename for f in choose_files(listing, "q4_k_xl")[1]] == ["M-UD-Q4_K_XL.gguf"]
    assert [f.filename for f in choose_files(listing, "q8_0")[1]] == [
        "Q8_0/M-Q8_0-00001-of-00002.gguf", "Q8_0/M-Q8_0-00002-of-00002.gguf"]
    with pytest.raises(NotFound) as exc:
        choose_files(listing, "f16")  # only the vision projector is F16: not a model file
    assert "q4_k_m" in exc.value.hint
    with pytest.raises(NotFound, match="missing part"):
        choose_files(listing, "bf16")
    parts = files_for_path(listing, "Q8_0/M-Q8_0-00002-of-00002.gguf")
    assert [p.filename for p in parts][0].endswith("00001-of-00002.gguf")


def test_license_files_shown_are_the_license_then_the_use_policy():
    listing = _listing("README.md", "USE_POLICY.md", "NOTICE", "LICENSE", "original/LICENSE")
    assert listing.license_files() == ["LICENSE", "USE_POLICY.md"]
