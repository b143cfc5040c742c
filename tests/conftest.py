"""Test isolation and shared fixtures.

Every test gets its own LLAMACTL_HOME and HF_HOME under a temporary folder, with the Hub
offline unless a test starts its own loopback hub. Fixture modules per area are loaded as
plugins below: tests/kit (tiny checkpoints and GGUFs), tests/hubsim (loopback Hub),
tests/synthetic (header-only GGUFs of the real models' shapes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.kit.fixtures", "tests.hubsim.fixtures", "tests.synthetic.fixtures", "tests.kit.llama4_fixtures"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "llamactl-home"
    monkeypatch.setenv("LLAMACTL_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("LLAMACTL_DEBUG", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return home


def run_cli(*args: str, input: str | bytes | None = None, env: dict | None = None,
            timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m llamactl ARGS` in a subprocess with pipes (not a terminal)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if isinstance(input, str):
        input = input.encode()
    proc = subprocess.run(
        [sys.executable, "-m", "llamactl", *args],
        input=input if input is not None else b"",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, timeout=timeout, cwd=REPO,
    )
    proc.out = proc.stdout.decode("utf-8", "replace")  # type: ignore[attr-defined]
    proc.err = proc.stderr.decode("utf-8", "replace")  # type: ignore[attr-defined]
    if check and proc.returncode != 0:
        raise AssertionError(f"llamactl {' '.join(args)} exited {proc.returncode}\n{proc.err}")
    return proc


@pytest.fixture
def cli():
    """The CLI in a subprocess: cli('list', '--json') -> CompletedProcess with .out/.err."""
    return run_cli


@pytest.fixture
def cli_here(capsys, monkeypatch):
    """The CLI in this process, as `cli` is used (returncode, out, err) but without starting
    an interpreter: for what the core decides (resolution, pulls, plans, removals). Keep
    `cli` for signals, terminals, start-up and anything huggingface_hub reads at import
    (HF_HOME's token file)."""
    from types import SimpleNamespace

    from llamactl.cli.app import main

    def run(*args: str, input: str = "", env: dict | None = None) -> SimpleNamespace:
        import io

        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            m.setattr(sys, "stdin", io.StringIO(input))
            capsys.readouterr()
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, out=out, err=err)

    return run


def pytest_collection_modifyitems(config, items):
    gpu = None
    for item in items:
        if "gpu" in item.keywords:
            if gpu is None:
                try:
                    import llama_cpp

                    gpu = bool(llama_cpp.llama_supports_gpu_offload())
                except Exception:
                    gpu = False
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="this llama.cpp build cannot offload to a GPU"))
