"""bench's core: test specs, sweeps, statistics over counted repetitions, renderers,
history; and one repetition through the real engine on the tiny model."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest

from llamactl import bench
from llamactl.cli import bench as cli_bench
from llamactl.errors import UsageError

# ---------------------------------------------------------------------------- test specs


@pytest.mark.parametrize("text,name,n_prompt,n_gen", [
    ("pp 512", "pp512", 512, 0),
    ("pp512", "pp512", 512, 0),
    ("tg 128", "tg128", 0, 128),
    ("pg 512,128", "pp512+tg128", 512, 128),
    ("PG 16, 4", "pp16+tg4", 16, 4),
])
def test_test_specs_parse_to_llama_bench_names(text, name, n_prompt, n_gen):
    spec = bench.parse_test_spec(text)
    assert (spec.name, spec.n_prompt, spec.n_gen) == (name, n_prompt, n_gen)
    assert bench.parse_test_spec(text, depth=4096).name == f"{name} @ d4096"


@pytest.mark.parametrize("text", ["xx 5", "pp", "pp -3", "tg 0", "pg 512", "tg 5,6", "pp abc"])
def test_bad_test_spec_is_a_usage_error_naming_the_value(text):
    with pytest.raises(UsageError) as info:
        bench.parse_test_spec(text)
    assert text in info.value.message


def test_default_tests_are_pp512_and_tg128_at_each_depth():
    tests = bench.build_tests(depths=[0, 1024])
    assert [t.name for t in tests] == ["pp512", "tg128", "pp512 @ d1024", "tg128 @ d1024"]
    assert [t.name for t in bench.build_tests(n_prompt=[0], n_gen=[64])] == ["tg64"]


@pytest.mark.parametrize("parser,text,bad", [
    (lambda t: bench.parse_int_list("--threads", t), "1,abc", "abc"),
    (lambda t: bench.parse_int_list("--threads", t), "1,,2", "1,,2"),
    (lambda t: bench.parse_int_list("--batch-size", t), "0", "0"),
    (bench.parse_gpu_layers, "auto,x9", "x9"),
    (lambda t: bench.parse_bool_list("--flash-attn", t), "0,maybe", "maybe"),
    (bench.parse_kv_types, "f16,q9_9", "q9_9"),
])
def test_unparsable_sweep_values_are_usage_errors_naming_the_value(parser, text, bad):
    with pytest.raises(UsageError) as info:
        parser(text)
    assert info.value.exit_code == 2
    assert bad in info.value.message


def test_sweep_values_parse():
    assert bench.parse_gpu_layers("auto, 0,99") == ["auto", 0, 99]
    assert bench.parse_bool_list("--flash-attn", "0,1,on,off") == [False, True, True, False]
    assert bench.parse_kv_types("F16,q8_0") == ["f16", "q8_0"]


def test_sweep_yields_every_combination_once():
    sweep = bench.Sweep(threads=[1, 2], n_batch=[32, 64, 128], flash_attn=[False, True])
    combos = sweep.combinations()
    assert len(combos) == 12 == len(set(combos))
    assert {(c.threads, c.n_batch, c.flash_attn) for c in combos} == {
        (t, b, fa) for t in (1, 2) for b in (32, 64, 128) for fa in (False, True)}
    assert sweep.swept() == ["threads", "n_batch", "flash_attn"]


def test_depth_beyond_an_explicit_context_is_a_usage_error():
    tests = bench.build_tests(n_prompt=[512], n_gen=[0], depths=[4096])
    with pytest.raises(UsageError) as info:
        bench.check_depths(tests, bench.Sweep(n_ctx=[8192, 2048]))
    assert "4096" in info.value.message and "2048" in info.value.message
    bench.check_depths(tests, bench.Sweep(n_ctx=[8192]))  # fits: no error


def test_default_context_fits_the_largest_test():
    tests = bench.build_tests(n_prompt=[512], n_gen=[128], depths=[0, 300])
    ctx = bench.default_ctx(tests)
    assert ctx % 256 == 0
    assert all(t.context_needed <= ctx for t in tests)


# ---------------------------------------------------------------------------- statistics


def test_mean_and_sample_standard_deviation():
    assert bench.mean_sd([10.0, 12.0, 14.0]) == (12.0, 2.0)
    assert bench.mean_sd([5.0]) == (5.0, 0.0)


def test_statistics_are_over_counted_repetitions_only():
    # known timings through the measuring seam: the first call is the warm-up (slow,
    # as a cold cache makes it), then three counted runs of 100 tokens
    timings = iter([50.0, 1.0, 2.0, 4.0])
    calls = []

    def fake_measure(engine, test, rng):
        calls.append(test.name)
        return bench.Sample(tokens=100, seconds=next(timings), ttft=0.5)

    test = bench.parse_test_spec("pp 100")
    out = bench.bench_test(object(), test, 3, warmup=True, measure=fake_measure)
    assert len(calls) == 4
    assert out["repetitions"] == 3
    assert out["samples_tps"] == [100.0, 50.0, 25.0]
    assert out["samples_seconds"] == [1.0, 2.0, 4.0]
    mean, sd = bench.mean_sd([100.0, 50.0, 25.0])
    assert out["tps_mean"] == pytest.approx(mean) == pytest.approx(175 / 3)
    assert out["tps_sd"] == pytest.approx(sd)
    assert out["ttft_seconds"] == 0.5


def test_without_warmup_every_run_counts():
    timings = iter([2.0, 4.0])
    out = bench.bench_test(object(), bench.parse_test_spec("tg 8"), 2, warmup=False,
                           measure=lambda e, t, r: bench.Sample(tokens=8, seconds=next(timings)))
    assert out["samples_tps"] == [4.0, 2.0]


# ---------------------------------------------------------------------------- renderers


def _row(**kw):
    base = dict(model="/models/a.gguf", test="pp512", model_type="llama 1B Q8_0",
                model_size=1 << 30, model_params=1_235_814_432, backend="CPU", gpu_layers=0,
                threads=2, n_batch=512, n_ubatch=512, kv_type="f16", flash_attn=False,
                n_prompt=512, tps_mean=123.456, tps_sd=1.5, samples_tps=[122.0, 124.9],
                repetitions=2)
    base.update(kw)
    return bench.BenchRow(**base).to_dict()


def test_markdown_has_llama_bench_columns_and_shows_swept_parameters():
    rows = [_row(), _row(kv_type="q8_0", flash_attn=True, test="tg128", n_prompt=0, n_gen=128)]
    md = cli_bench.render_md(rows).splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    assert header[:7] == ["model", "type", "size", "params", "backend", "ngl", "threads"]
    assert header[-2:] == ["test", "t/s"]
    assert "type_kv" in header and "fa" in header and "n_batch" not in header
    assert set(md[1].replace("|", "").split()) <= {"-" * n for n in range(1, 80)} | {
        "-" * n + ":" for n in range(1, 80)}
    assert len(md) == 4
    assert "123.46 ± 1.50" in md[2] and "a.gguf" in md[2] and "1.24 B" in md[2]


def test_markdown_error_rows_say_error():
    rows = [_row(), _row(model="bad.gguf", tps_mean=None, tps_sd=None, error="boom")]
    assert "error: boom" in cli_bench.render_md(rows).splitlines()[3]


def test_csv_has_every_field_and_one_line_per_row():
    rows = [_row(), _row(test="tg128")]
    parsed = list(csv.DictReader(io.StringIO(cli_bench.render_csv(rows))))
    assert len(parsed) == 2
    assert {"model", "test", "tps_mean", "tps_sd", "threads", "n_batch", "samples_tps",
            "load_seconds", "peak_rss_bytes"} <= set(parsed[0])
    assert float(parsed[0]["tps_mean"]) == pytest.approx(123.456)
    assert parsed[0]["samples_tps"].split() == ["122", "124.9"]


# ---------------------------------------------------------------------------- history


def test_history_round_trip_and_unreadable_lines(isolated_home):
    rows = [bench.BenchRow(**{k: v for k, v in _row().items()}),
            bench.BenchRow(**{k: v for k, v in _row(test="tg128").items()})]
    path = bench.save_history(rows, {"hostname": "box", "cpu_model": "X"})
    assert path.parent == isolated_home / "data"
    bench.save_history(rows[:1], {"hostname": "box2"})
    with open(path, "a") as fh:
        fh.write("{not json\n")
    records, bad = bench.load_history()
    assert bad == 1
    assert [r["test"] for r in records] == ["pp512", "tg128", "pp512"]
    assert [r["machine"]["hostname"] for r in records] == ["box", "box", "box2"]
    assert records[0]["tps_mean"] == pytest.approx(123.456)
    assert all(r["saved_at"] for r in records)


def test_history_is_empty_without_a_file():
    assert bench.load_history() == ([], 0)


# ---------------------------------------------------------------------------- machine


def test_machine_details_name_cpu_build_and_version():
    from llamactl.machine import machine_info

    info = machine_info()
    from llamactl import __version__

    assert info["llamactl_version"] == __version__
    assert info["cpu_model"] and info["cpu_cores_logical"] >= 1
    assert "CPU" in info["llama_cpp_system_info"]
    assert info["ggml_version"] and info["llama_cpp_python_version"]
    assert isinstance(info["gpus"], list)
    json.dumps(info)


# ---------------------------------------------------------------------------- real engine


@pytest.fixture(scope="module")
def tiny_engine(tiny_gguf):
    from llamactl.engine import Engine, EngineOptions
    from llamactl.load import LoadSpec

    engine = Engine.load(tiny_gguf, EngineOptions(load=LoadSpec(ctx=256, gpu_layers=0, threads=1)))
    yield engine
    engine.close()


@pytest.mark.slow
def test_depth_prefix_is_evaluated_once_then_reused(tiny_engine):
    rng = random.Random(0)
    test = bench.parse_test_spec("pp 8", depth=32)
    before = tiny_engine.evaluated_total
    sample = bench.measure_once(tiny_engine, test, rng)
    # 32 depth tokens evaluated untimed, then only the 8 test tokens
    assert tiny_engine.evaluated_total - before == 40
    assert tiny_engine.last_stats.prompt_tokens == 40
    assert tiny_engine.last_stats.prompt_tokens_evaluated == 8
    assert sample.tokens == 8 and sample.seconds > 0


@pytest.mark.slow
def test_tg_generates_exactly_n_tokens_from_one_token(tiny_engine):
    rng = random.Random(1)
    before = tiny_engine.evaluated_total
    sample = bench.measure_once(tiny_engine, bench.parse_test_spec("tg 12"), rng)
    stats = tiny_engine.last_stats
    assert stats.completion_tokens == 12 and stats.prompt_tokens == 1
    # llama-bench's tg N is N decodes: the prompt token, then 11 sampled ones (the last
    # sampled token is never decoded)
    assert tiny_engine.evaluated_total - before == 12
    assert sample.tokens == 12 and sample.ttft is not None and sample.ttft <= sample.seconds


@pytest.mark.slow
def test_pg_counts_prompt_and_generated_tokens(tiny_engine):
    sample = bench.measure_once(tiny_engine, bench.parse_test_spec("pg 10,5"), random.Random(2))
    assert tiny_engine.last_stats.prompt_tokens == 10
    assert tiny_engine.last_stats.completion_tokens == 5
    assert sample.tokens == 15
