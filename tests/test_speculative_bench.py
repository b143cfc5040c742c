"""benchmarks/speculative.py on the kit's tiny models: its JSON report has a row per draft and
draft length with tokens/s, the ratio against the target alone and the acceptance; every run
generates exactly the tokens asked for (end of turn ignored), so tokens/s is over tokens
really generated; the good draft (the target's Q8_0) is accepted far more often than a
different random model; the table shows the same rows."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _bench():
    spec = importlib.util.spec_from_file_location("speculative_bench", REPO / "benchmarks" / "speculative.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tiny_gguf, tiny_gguf_q8, tiny_gguf_factory):
    import contextlib
    import io

    stranger = tiny_gguf_factory("f32", seed=99)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = _bench().main(["--model", str(tiny_gguf), "--draft", f"q8={tiny_gguf_q8}",
                            "--draft", f"poor={stranger}", "--draft-max", "3", "adaptive",
                            "-n", "24", "-r", "1", "-t", "1", "--temperature", "0.8", "--profile", "--json"])
    assert rc == 0
    return json.loads(out.getvalue())


def test_a_row_per_draft_and_length_with_ratio_and_acceptance(report):
    (group,) = report["groups"]
    rows = {(r["draft"], r["draft_max_label"], r["temperature"]): r for r in group["rows"]}
    assert set(rows) == {("q8", "3", 0.0), ("q8", "adaptive", 0.0), ("poor", "3", 0.0),
                         ("poor", "adaptive", 0.0), ("q8", "adaptive", 0.8), ("poor", "adaptive", 0.8)}
    for r in rows.values():
        assert r["tokens"] == r["alone_tokens"] == 24          # ignore_eos: every run is full length
        assert r["tps"] > 0 and r["alone_tps"] > 0
        assert math.isclose(r["ratio"], r["runs"]["drafted"][0]["tps"] / r["runs"]["alone"][0]["tps"])
        assert 0.0 <= r["acceptance"] <= 1.0
        assert r["proposed_per_run"] > 0
    # the Q8_0 copy agrees with its target far more often than another random model
    for length in ("3", "adaptive"):
        assert rows[("q8", length, 0.0)]["acceptance"] > rows[("poor", length, 0.0)]["acceptance"] + 0.3
    assert group["models"]["drafts"]["q8"]["bytes"] < group["models"]["target"]["bytes"]
    assert set(group["costs"]["draft_decode_ms"]) == {"q8", "poor"}


def test_the_table_shows_every_row(report):
    table = _bench().render(report)
    lines = table.splitlines()
    data = [ln for ln in lines if ln.split()[:1] in (["q8"], ["poor"]) and "x" in ln]
    assert len(data) == 6
    assert any("ratio" in ln and "accept" in ln for ln in lines)
    assert "goal: >= 1.5x" in table
