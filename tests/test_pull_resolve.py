"""One model reference rule for every verb that takes a MODEL (llamactl.models.resolve):
the same reference means the same file, and a reference to nothing is the same exit code,
whichever verb is given it. In-process CLI runs (cli_here)."""

from __future__ import annotations

import json
import shutil

import pytest

# verb -> the arguments around MODEL that make it cheap and print JSON
VERBS = {
    "show": lambda m: ["show", m, "--json"],
    "plan": lambda m: ["plan", m, "--json"],
    "chat": lambda m: ["chat", m, "hi", "--dry-run", "--json"],
    "bench": lambda m: ["bench", m, "-p", "8", "-n", "0", "-r", "1", "--no-warmup", "-o", "json"],
    "quantize": lambda m: ["quantize", m, "Q8_0", "--dry-run", "--json"],
    "rm": lambda m: ["rm", m, "--dry-run", "--json"],
}


def _path_of(verb: str, doc) -> str:
    if verb == "show":
        return doc["paths"][0]
    if verb == "bench":
        assert all(row.get("error") is None for row in doc["results"]), doc["results"]
        return doc["results"][0]["model_path"]
    if verb == "quantize":
        return doc["source"]
    if verb == "rm":
        return doc["delete"][0]
    if verb == "plan":
        return doc["model"]
    return doc["path"]


@pytest.fixture
def registered_tiny(tiny_gguf, isolated_home):
    """The tiny model copied into llamactl's models folder and registered as tiny:f32."""
    from llamactl import paths, registry

    folder = paths.ensure(paths.models_dir() / "tiny")
    path = folder / "tiny-F32.gguf"
    shutil.copy(tiny_gguf, path)
    registry.put(registry.local_entry("tiny:f32", "tiny", "f32", path))
    return path


def test_a_registered_name_means_the_same_file_to_every_verb(cli_here, registered_tiny):
    for verb, args in VERBS.items():
        proc = cli_here(*args("tiny:f32"))
        assert proc.returncode == 0, (verb, proc.err)
        assert _path_of(verb, json.loads(proc.out)) == str(registered_tiny), verb


@pytest.mark.parametrize("ref,code", [
    ("nothing-here:q8_0", 4),          # no such catalog model, no such registered name
    ("./missing-model.gguf", 4),       # a path that is not there
    ("hf.co/bad name", 2),             # a malformed reference
])
def test_a_reference_to_nothing_is_the_same_exit_code_for_every_verb(cli_here, ref, code):
    for verb, args in VERBS.items():
        proc = cli_here(*args(ref))
        if verb == "bench" and proc.out:   # a sweep reports a model it cannot load as error rows
            rows = json.loads(proc.out)["results"]
            assert {r["exit_code"] for r in rows} == {code}, (ref, rows)
            assert proc.returncode == code, (verb, ref, proc.err)
            continue
        assert proc.returncode == code, (verb, ref, proc.err)
        assert proc.out == "", (verb, proc.out)
        assert "Traceback" not in proc.err
