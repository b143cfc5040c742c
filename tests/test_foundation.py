"""The conventions every verb relies on: exit codes, stdout/stderr, start-up cost, paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

VERBS = ["models", "pull", "list", "show", "rm", "license", "convert", "quantize", "chat",
         "serve", "bench", "plan", "doctor"]
ANSI = re.compile(r"\x1b\[")


def test_help_lists_every_verb():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for verb in VERBS:
        assert re.search(rf"^\s+{verb}\s", proc.out, re.M), f"{verb} missing from --help"
    assert proc.err == ""


def test_version_names_llamactl_and_llama_cpp():
    from importlib import metadata

    import llamactl

    proc = run_cli("--version")
    assert proc.returncode == 0
    assert f"llamactl {llamactl.__version__}" in proc.out
    assert f"llama-cpp-python {metadata.version('llama-cpp-python')}" in proc.out


@pytest.mark.parametrize("args", [["no-such-verb"], ["list", "--no-such-option"], ["--bogus"],
                                  ["license", "bogus"], ["chat"], ["list", "extra"], ["help"],
                                  ["version"]])
def test_unknown_verb_or_option_is_usage_error(args):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.out == ""
    assert "Usage:" in proc.err
    assert "Traceback" not in proc.err


@pytest.mark.parametrize("word", ["no-such-verb", "help", "version"])
def test_unknown_verb_is_named(word):
    proc = run_cli(word, "--json")
    assert proc.returncode == 2
    assert f"No such command '{word}'" in proc.err


def test_top_level_help_is_the_same_without_building_the_verbs():
    # `llamactl --help` registers each verb by its summary only; what it prints must not
    # differ from the help of the app with every verb built in full
    from typer.testing import CliRunner

    from llamactl.cli.app import ALL, build_app

    lazy = CliRunner().invoke(build_app(None), ["--help"], prog_name="llamactl")
    full = CliRunner().invoke(build_app(ALL), ["--help"], prog_name="llamactl")
    assert lazy.exit_code == full.exit_code == 0
    assert lazy.output == full.output
    for verb in VERBS:
        assert re.search(rf"^\s+{verb}\s+\S", lazy.output, re.M)


@pytest.mark.parametrize("verb", VERBS)
def test_verb_help_is_the_same_when_only_that_verb_is_built(verb):
    from typer.testing import CliRunner

    from llamactl.cli.app import ALL, build_app

    lazy = CliRunner().invoke(build_app(verb), [verb, "--help"], prog_name="llamactl")
    full = CliRunner().invoke(build_app(ALL), [verb, "--help"], prog_name="llamactl")
    assert lazy.exit_code == full.exit_code == 0
    assert lazy.output == full.output
    assert f"Usage: llamactl {verb}" in lazy.output


@pytest.mark.parametrize("argv", [["list"], ["license", "list"]])
def test_ctrl_c_inside_a_verb_exits_130(argv, monkeypatch, capsys):
    from llamactl import licenses, registry
    from llamactl.cli.app import main

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "entries", interrupted)
    monkeypatch.setattr(licenses, "records", interrupted)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: interrupted\n"


# rich and pydantic too: rich is for terminals (piped output is plain), and pydantic (which
# Typer loads to coerce option values) costs as much as Typer itself
@pytest.mark.parametrize("module", ["llama_cpp", "prompt_toolkit", "gguf", "numpy", "huggingface_hub",
                                    "torch", "transformers", "rich", "pydantic",
                                    "importlib.metadata"])
def test_startup_imports_nothing_heavy(module):
    code = (
        "import sys\n"
        "from llamactl.cli.app import main\n"
        "for argv in (['--help'], ['--version'], ['list'], ['list', '--json']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print({module!r} in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "False", f"{module} imported at start-up"


def test_home_that_is_a_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "a-file"
    bad.write_text("not a folder")
    proc = run_cli("list", env={"LLAMACTL_HOME": str(bad)})
    assert proc.returncode == 1
    assert proc.out == ""
    assert str(bad) in proc.err
    assert "Traceback" not in proc.err
    assert proc.err.strip().splitlines()[0].startswith("error:")


def test_home_below_a_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "a-file"
    bad.write_text("")
    proc = run_cli("list", env={"LLAMACTL_HOME": str(bad / "sub")})
    assert proc.returncode == 1
    assert "Traceback" not in proc.err
    assert "LLAMACTL_HOME" in proc.err


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "a-file"
    bad.write_text("")
    proc = run_cli("list", env={"LLAMACTL_HOME": str(bad), "LLAMACTL_DEBUG": "1"})
    assert proc.returncode == 1
    assert "Traceback" in proc.err


def test_paths_follow_llamactl_home(tmp_path, monkeypatch):
    from llamactl import paths

    monkeypatch.setenv("LLAMACTL_HOME", str(tmp_path / "h"))
    assert paths.config_dir() == tmp_path / "h" / "config"
    assert paths.data_dir() == tmp_path / "h" / "data"
    assert paths.state_dir() == tmp_path / "h" / "state"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert paths.hf_hub_cache() == tmp_path / "hub"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfh"))
    assert paths.hf_hub_cache() == tmp_path / "hfh" / "hub"


def test_paths_use_platform_folders_without_home(monkeypatch, tmp_path):
    from llamactl import paths

    monkeypatch.delenv("LLAMACTL_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xc"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xd"))
    if sys.platform.startswith("linux"):
        assert paths.config_dir() == tmp_path / "xc" / "llamactl"
        assert paths.data_dir() == tmp_path / "xd" / "llamactl"


def test_closed_pipe_ends_quietly():
    # `llamactl models | head -1`: the reader goes away; no traceback, no error exit.
    proc = subprocess.run(
        f"{sys.executable} -m llamactl models | head -c 1 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
        shell=True, executable="/bin/bash", capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "Traceback" not in proc.stderr
    assert "BrokenPipe" not in proc.stderr
    assert proc.stdout.strip() in ("0", "141")


def test_json_output_is_one_document_and_piped_output_has_no_ansi():
    proc = run_cli("models", "--json")
    assert proc.returncode == 0
    json.loads(proc.out)  # exactly one document
    plain = run_cli("models")
    assert plain.returncode == 0
    assert not ANSI.search(plain.out) and not ANSI.search(plain.err)


def test_completions_are_current():
    proc = subprocess.run([sys.executable, "scripts/gen_completions.py", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_completions_offer_every_verb():
    bash = (REPO / "completions" / "llamactl.bash").read_text()
    zsh = (REPO / "completions" / "_llamactl").read_text()
    fish = (REPO / "completions" / "llamactl.fish").read_text()
    for verb in VERBS:
        assert verb in bash.split("compgen -W \"", 1)[1].split('"', 1)[0]
        assert f"'{verb}:" in zsh
        assert f"-a {verb} " in fish
    syntax = subprocess.run(["bash", "-n", str(REPO / "completions" / "llamactl.bash")])
    assert syntax.returncode == 0


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_cmds = [b.strip() for b in blocks if "pytest" in b]
    assert len(test_cmds) == 1, "README must show exactly one test command"
    ci = (REPO / ".ci" / "run").read_text()
    assert test_cmds[0] in ci.splitlines()


def test_changelog_has_unreleased_section():
    text = (REPO / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
