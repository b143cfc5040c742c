"""Measurements in llama-bench's vocabulary, taken through the engine that chat uses.

Tests:
  pp N     prompt processing: N random tokens evaluated in one go (tokens/s = N / time)
  tg N     text generation: one random token, then N tokens generated one at a time
           (N decodes, as llama-bench counts them; tokens/s = N / time)
  pg P,N   a prompt of P tokens then N generated tokens (tokens/s = (P + N) / time)
  depth D  any of the above with D random tokens already in the context: the D tokens are
           evaluated first (not timed), then the test reuses that prefix.

Each test runs one uncounted warm-up, then `reps` counted repetitions; the mean and sample
standard deviation of tokens/s are taken over the counted repetitions only. Prompts are
random token ids (no tokenizer effects), sampling is greedy, end-of-sequence is ignored.

Every combination of the swept load parameters and models is loaded once through
`Engine.load` and runs every test. A combination that fails (a missing model, a load error)
becomes an error row; the others still run.

The core returns data; `llamactl.cli.bench` renders it.

Modules: `specs` (tests and sweeps), `run` (measuring, statistics, rows), `history` (saved
results); the machine record saved with them is `llamactl.machine.machine_info`."""

from llamactl.bench.history import HISTORY_FILE, history_path, load_history, save_history
from llamactl.bench.run import (BenchRow, Sample, bench_test, mean_sd, measure_once, peak_rss_bytes,
                                random_tokens, repeat, run_bench)
from llamactl.bench.specs import (LoadParams, Sweep, TestSpec, build_tests, check_depths, default_ctx,
                                  parse_bool_list, parse_gpu_layers, parse_int_list, parse_kv_types,
                                  parse_test_spec)

__all__ = ["HISTORY_FILE", "BenchRow", "LoadParams", "Sample", "Sweep", "TestSpec", "bench_test",
           "build_tests", "check_depths", "default_ctx", "history_path", "load_history", "mean_sd",
           "measure_once", "parse_bool_list", "parse_gpu_layers", "parse_int_list", "parse_kv_types",
           "parse_test_spec", "peak_rss_bytes", "random_tokens", "repeat", "run_bench", "save_history"]
