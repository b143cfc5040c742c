"""The load specification's rules (llamactl.load), each checked once through every verb that
takes the option: the same input gets the same verdict, the same message and the same exit
code from `plan`, `chat --dry-run` and `bench`. In process (llamactl.cli.app.main), so cheap;
only the accepted bench runs touch llama.cpp, on the tiny model."""

from __future__ import annotations

import json

import pytest

from llamactl.errors import UsageError
from llamactl.load import KV_TYPES, LoadSpec, load_spec, parse_gpu_layers, parse_size

GIB = 2**30
BENCH_SMALL = ["-p", "8", "-n", "0", "-r", "1", "--no-warmup", "--json", "-q"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`llamactl ARGV` in this process: (exit code, stdout, stderr)."""
    from llamactl.cli.app import main

    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def verbs(model: str) -> dict[str, list[str]]:
    """Each verb that takes the load options, as a command line ending where options go."""
    return {
        "plan": ["plan", model, "--json"],
        "chat": ["chat", model, "--dry-run", "--json"],
        "bench": ["bench", model, *BENCH_SMALL],
    }


# bench takes a flash-attention list (0/1), the others on|off|auto (or the bare switch: on)
FA = {"plan": ["--flash-attn"], "chat": ["--flash-attn"], "bench": ["--flash-attn", "1"]}
FA_OFF = {"plan": ["--flash-attn", "off"], "chat": ["--flash-attn=off"], "bench": []}  # bench: off by default


@pytest.fixture(scope="module")
def model(tiny_gguf) -> str:
    return str(tiny_gguf)


@pytest.mark.parametrize("verb", ["plan", "chat", "bench"])
@pytest.mark.parametrize("args,text", [
    (["--kv-type", "q8_0", "{fa_off}"], "--kv-type q8_0 needs --flash-attn"),
    (["--kv-type", "q3"], "unknown --kv-type 'q3'"),
    (["--gpu-layers", "many"], "--gpu-layers takes a number or 'auto'"),
    (["--gpu-layers", "-2"], "--gpu-layers must be -1 (all)"),
])
def test_a_broken_rule_is_the_same_exit_2_and_message_from_every_verb(capsys, tmp_path, verb, args, text):
    """Checked before anything slow: the model named does not even exist (that would be 4)."""
    args = [x for a in args for x in (FA_OFF[verb] if a == "{fa_off}" else [a])]
    code, out, err = run(capsys, *verbs(str(tmp_path / "absent.gguf"))[verb], *args)
    assert code == 2, err
    assert text in err and out == ""
    assert err.count("\n") <= 2 and "Traceback" not in err


@pytest.mark.parametrize("verb", ["plan", "chat", "bench"])
def test_iq4_nl_with_flash_attention_is_accepted_by_every_verb(capsys, model, verb):
    """llama.cpp takes iq4_nl for the KV cache (with flash attention): so does every verb."""
    code, out, err = run(capsys, *verbs(model)[verb], "--kv-type", "iq4_nl", *FA[verb])
    assert code == 0, err
    doc = json.loads(out)
    if verb == "bench":
        row = doc["results"][0]
        assert row["error"] is None and row["kv_type"] == "iq4_nl" and row["tps_mean"] > 0
    else:
        assert doc["kv_type"] == "iq4_nl" and doc["flash_attn"] is True


@pytest.mark.parametrize("verb", ["plan", "chat", "bench"])
def test_gpu_layers_minus_one_means_every_layer_for_every_verb(capsys, model, verb):
    code, out, err = run(capsys, *verbs(model)[verb], "--gpu-layers", "-1")
    assert code == 0, err
    doc = json.loads(out)
    if verb == "bench":
        row = doc["results"][0]
        assert row["error"] is None and row["gpu_layers_requested"] == -1
        assert row["gpu_layers"] == 3  # the tiny model's 2 layers + the output layer
    else:
        assert doc["n_gpu_layers"] == doc["n_layers"] + 1 == 3


def test_a_sweep_with_one_broken_combination_runs_the_others(capsys, model):
    """bench sweeps: a combination that breaks a rule is an error row with the rule's
    message (exit 2 at the end); the valid ones still run."""
    code, out, err = run(capsys, *verbs(model)["bench"], "--kv-type", "f16,q8_0", "--flash-attn", "0")
    assert code == 2
    rows = json.loads(out)["results"]
    assert [r["kv_type"] for r in rows] == ["f16", "q8_0"]
    assert rows[0]["error"] is None and "--kv-type q8_0 needs --flash-attn" in rows[1]["error"]


@pytest.mark.parametrize("value,expected", [("24G", 24 * 10**9), ("24GB", 24 * 10**9),
                                            ("24GiB", 24 * GIB), ("24Gi", 24 * GIB)])
def test_vram_sizes_follow_the_one_convention(capsys, model, value, expected):
    code, out, err = run(capsys, "plan", model, "--vram", value, "--ram", "8GiB", "--json")
    assert code == 0, err
    assert json.loads(out)["vram"] == expected


@pytest.mark.parametrize("argv", [["plan", "{m}", "--vram", "lots"], ["plan", "{m}", "--ram", "lots"],
                                  ["quantize", "{m}", "Q8_0", "--split-max-size", "lots"]])
def test_a_bad_size_is_exit_2_for_every_size_option(capsys, tmp_path, argv):
    code, out, err = run(capsys, *[a.replace("{m}", str(tmp_path / "absent.gguf")) for a in argv])
    assert code == 2
    assert "not a size: 'lots'" in err and argv[-2] in err


# --- the parsers and the type, directly ------------------------------------------------


@pytest.mark.parametrize("text,value", [
    ("80GiB", 80 * GIB), ("24GB", 24 * 10**9), ("24G", 24 * 10**9), ("512MiB", 512 * 2**20),
    ("1.5GiB", int(1.5 * GIB)), ("2000M", 2 * 10**9), ("1.5T", int(1.5e12)), ("0", 0),
    ("1000", 1000), ("1000B", 1000),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "", "-1GiB", "12XB", "G", "5ib"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError, match="not a size"):
        parse_size(text)


def test_gpu_layers_parser():
    assert [parse_gpu_layers(v) for v in ("auto", " AUTO", None, "-1", "0", "99", 7)] == \
        ["auto", "auto", "auto", -1, 0, 99, 7]


def test_the_spec_is_checked_however_it_is_built():
    assert LoadSpec(kv_type="IQ4_NL", flash_attn=True).kv_type == "iq4_nl"
    with pytest.raises(UsageError, match="needs --flash-attn"):
        LoadSpec(kv_type="q4_0", flash_attn=False)
    assert LoadSpec(kv_type="q4_0").flash_attn is None  # auto: the plan turns it on
    with pytest.raises(UsageError, match="needs --flash-attn"):
        LoadSpec(flash_attn="off").replace(kv_type="q5_1")
    spec = load_spec(gpu_layers="-1", n_batch=64, n_ubatch=512)
    assert spec.gpu_layers == -1 and spec.planned_gpu_layers == -1
    assert spec.n_ubatch == 64  # never larger than the batch
    assert load_spec().planned_gpu_layers is None
    # every quantized type needs flash attention, the float types do not
    assert {k for k, t in KV_TYPES.items() if not t.quantized} == {"f32", "f16", "bf16"}
