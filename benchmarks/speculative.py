"""Speculative decoding (issue #13): generation tokens/s of a target alone and with a draft
model, and the draft's acceptance rate, on CPU.

    python benchmarks/speculative.py --threads 1                     # synthetic models, cached in --work
    python benchmarks/speculative.py --model T.gguf --draft small=D.gguf --draft-max 4 8 adaptive

Without --model it builds (once, into --work, default /tmp/specbench) a random-weight
Llama 3-shaped F32 target (benchmarks/multiturn_ttft.py's builder: hidden 1024, 8 layers,
FFN 3072, ~400 MB) and three drafts with its vocabulary:

- q8_0, q4_0: the target quantized by llamactl's own quantizer (a good draft: the same model,
  rounded, so it agrees with the target on most tokens while reading 3.8x / 7x fewer bytes);
- poor: a different random model (another seed), quantized to Q8_0 so that it costs what
  the good Q8_0 draft costs: the cost of drafting when the target rejects nearly everything.

A copy of the target costs a large part of the target per token (Q8_0 reads 3.8x fewer bytes
but decodes only ~2x faster here), unlike a real pair (Llama 3.2 1B for 8B or 70B). So a
second group (`--small-layers K`, default 2; 0 skips it) measures a cheap draft too: a target
of the same shape and cost whose layers from K on write almost nothing to the residual stream
(multiturn_ttft's `loud_layers`), against the same seed's K-layer model (small_f32, and its
Q8_0: small_q8), which therefore predicts it well at a fraction of its cost.

Every configuration (draft x --draft-max, greedy, plus one sampled row per draft at
--temperature) is measured as pairs: the target alone and the target with the draft, one
after the other, the order alternating, `--reps` times (after one warm-up). Each run resets
both KV caches and generates `--n-gen` tokens ignoring end of turn (`stream_tokens(...,
ignore_eos=True)`, so every run produces exactly that many tokens); tokens/s is Stats'
`generation_tps` (generated tokens over the time from the end of the prompt to the last
token, the draft's own prompt evaluation included, as a user pays it). The table shows
medians of tokens/s and of the paired ratio with/alone; acceptance is accepted/proposed
draft tokens summed over the repetitions. "cpu x" is the same paired ratio by process CPU
time, steadier than wall time on a shared machine. Goal (#13): >= 1.5x at >= 70% acceptance.

`--profile` adds where the time goes: the target's decode of 1 token against its batch of
k tokens with logits for every row (the verification step), each draft's decode of one
token, and for every row the split of the measured time into draft decodes, target
verifications and the rest (Python, sampling), from the counts of evaluated positions.
Run under `flock /tmp/cpu.lock` with `--threads 1` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GOAL_RATIO = 1.5
GOAL_ACCEPTANCE = 0.70
PROMPT = "Once upon a time, an old llama told stories to"
VERIFY_SIZES = (1, 2, 3, 5, 9, 17)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- models ------------------------------------------------------------------------------

def build_models(work: Path, *, n_embd: int, n_layer: int, n_ff: int, threads: int | None) -> dict:
    """The synthetic target and its drafts, built once into `work` (reused when present):
    {"target": Path, "drafts": {name: Path}}."""
    from multiturn_ttft import build_synthetic_gguf

    from llamactl.quantize import quantize_gguf

    work.mkdir(parents=True, exist_ok=True)
    shape = dict(n_embd=n_embd, n_layer=n_layer, n_head=n_embd // 64, n_head_kv=max(1, n_embd // 256),
                 n_ff=n_ff)
    stem = f"llama3-h{n_embd}-l{n_layer}-ff{n_ff}"

    def built(path: Path, make) -> Path:
        if not path.exists():
            t0 = time.perf_counter()
            tmp = path.with_suffix(".partial")
            make(tmp)
            tmp.replace(path)
            log(f"built {path.name} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        return path

    target = built(work / f"{stem}-s0-f32.gguf", lambda p: build_synthetic_gguf(p, seed=0, **shape))
    other = built(work / f"{stem}-s1-f32.gguf", lambda p: build_synthetic_gguf(p, seed=1, **shape))
    drafts = {
        "q8_0": built(work / f"{stem}-s0-q8_0.gguf", lambda p: quantize_gguf(target, p, "Q8_0", threads=threads)),
        "q4_0": built(work / f"{stem}-s0-q4_0.gguf", lambda p: quantize_gguf(target, p, "Q4_0", threads=threads)),
        "poor": built(work / f"{stem}-s1-q8_0.gguf", lambda p: quantize_gguf(other, p, "Q8_0", threads=threads)),
    }
    return {"target": target, "drafts": drafts}


def build_small_pair(work: Path, *, n_embd: int, n_layer: int, n_ff: int, small_layers: int,
                     threads: int | None) -> dict:
    """A target of the same shape whose layers from `small_layers` on write almost nothing to
    the residual stream (multiturn_ttft's `loud_layers`), and its cheap draft: the same seed's
    `small_layers`-layer model, in F32 and Q8_0. {"target": Path, "drafts": {name: Path}}."""
    from multiturn_ttft import build_synthetic_gguf

    from llamactl.quantize import quantize_gguf

    work.mkdir(parents=True, exist_ok=True)
    shape = dict(n_embd=n_embd, n_head=n_embd // 64, n_head_kv=max(1, n_embd // 256), n_ff=n_ff, seed=0)
    stem = f"llama3-h{n_embd}-ff{n_ff}-s0"

    def built(path: Path, make) -> Path:
        if not path.exists():
            tmp = path.with_suffix(".partial")
            make(tmp)
            tmp.replace(path)
            log(f"built {path.name} ({path.stat().st_size / 1e6:.0f} MB)")
        return path

    target = built(work / f"{stem}-l{n_layer}-loud{small_layers}-f32.gguf",
                   lambda p: build_synthetic_gguf(p, n_layer=n_layer, loud_layers=small_layers, **shape))
    small = built(work / f"{stem}-l{small_layers}-f32.gguf",
                  lambda p: build_synthetic_gguf(p, n_layer=small_layers, **shape))
    small_q8 = built(work / f"{stem}-l{small_layers}-q8_0.gguf",
                     lambda p: quantize_gguf(small, p, "Q8_0", threads=threads))
    return {"target": target, "drafts": {"small_q8": small_q8, "small_f32": small}}


# -- one generation ------------------------------------------------------------------------

def generate(target, prompt: list[int], sampling) -> dict:
    """One generation from empty caches: tokens/s (wall and CPU), tokens, draft counts, and
    the positions each model evaluated."""
    from llamactl.engine import Stats

    target.reset()
    draft = target.draft.engine if target.draft is not None else None
    t_eval0 = target.evaluated_total
    d_eval0 = draft.evaluated_total if draft is not None else 0
    stats = None
    c0 = time.process_time()
    cpu_after_prompt = None
    for item in target.stream_tokens(prompt, sampling, ignore_eos=True, reuse_cache=False):
        if cpu_after_prompt is None:
            cpu_after_prompt = time.process_time()   # the first token: the prompt is evaluated
        if isinstance(item, Stats):
            stats = item
    cpu = time.process_time() - (cpu_after_prompt or c0)
    n = stats.completion_tokens
    return {
        "tokens": n, "seconds": stats.generation_seconds, "tps": stats.generation_tps,
        # CPU time from the first token on (the wall figure starts at the end of the prompt)
        "cpu_tps": (n - 1) / cpu if cpu > 0 and n > 1 else 0.0,
        "proposed": stats.draft_tokens, "accepted": stats.draft_accepted_tokens,
        "target_positions": target.evaluated_total - t_eval0 - stats.prompt_tokens_evaluated,
        "draft_positions": (draft.evaluated_total - d_eval0) if draft is not None else 0,
    }


# -- the measurement -------------------------------------------------------------------------

def parse_draft_max(values: list[str]) -> list[int | None]:
    out: list[int | None] = []
    for v in values:
        out.append(None if v.lower() in ("adaptive", "auto", "none") else int(v))
    return out


def configurations(drafts: list[str], draft_maxes: list[int | None], temperature: float | None) -> list[dict]:
    rows = [{"draft": d, "draft_max": m, "temperature": 0.0} for d in drafts for m in draft_maxes]
    if temperature:
        # one sampled row per draft, at the adaptive length (or the first one asked for)
        m = None if None in draft_maxes else draft_maxes[0]
        rows += [{"draft": d, "draft_max": m, "temperature": float(temperature)} for d in drafts]
    return rows


def measure(target_path: Path, draft_paths: dict[str, Path], configs: list[dict], *, reps: int,
            n_gen: int, threads: int | None, seed: int = 1234, profile: bool = False) -> dict:
    """Load the target and every draft once, then measure each configuration as `reps`
    interleaved pairs (alone, with draft). Returns the report (rows of medians)."""
    from llamactl.engine import Engine, EngineOptions, Sampling
    from llamactl.engine.speculate import options_for_draft
    from llamactl.load import LoadSpec

    prompt_probe = None
    options = EngineOptions(load=LoadSpec(ctx=512, threads=threads, gpu_layers=0), seed=seed)
    target = Engine.load(target_path, options)
    engines: dict[str, Engine] = {}
    try:
        prompt = target.tokenize(PROMPT, add_bos=True)
        prompt_probe = len(prompt)
        if prompt_probe + n_gen + 32 > target.n_ctx:
            raise SystemExit(f"--n-gen {n_gen} does not fit a context of {target.n_ctx}")
        for name, path in draft_paths.items():
            engines[name] = Engine.load(path, options_for_draft(target.options, target.n_ctx))

        def use(name: str | None, draft_max: int | None) -> None:
            target.draft = None        # detach without closing: the draft engines are reused
            if name is not None:
                target.attach_draft(engines[name], draft_max, name=name)

        def run(name: str | None, cfg: dict) -> dict:
            use(name, cfg["draft_max"])
            sampling = Sampling(temperature=cfg["temperature"], max_tokens=n_gen, seed=seed)
            return generate(target, prompt, sampling)

        rows = []
        for cfg in configs:
            run(cfg["draft"], cfg)                                   # warm-up, not counted
            alone, drafted = [], []
            for r in range(reps):
                if r % 2 == 0:
                    alone.append(run(None, cfg)); drafted.append(run(cfg["draft"], cfg))
                else:
                    drafted.append(run(cfg["draft"], cfg)); alone.append(run(None, cfg))
            row = summarise(cfg, alone, drafted)
            rows.append(row)
            log(f"{row['draft']:>6} draft_max {row['draft_max_label']:>8} T={row['temperature']:.1f}: "
                f"alone {row['alone_tps']:.2f} tok/s, with draft {row['tps']:.2f} tok/s "
                f"({row['ratio']:.2f}x, cpu {row['cpu_ratio']:.2f}x), acceptance {row['acceptance'] * 100:.1f}%")
        report = {"prompt_tokens": prompt_probe, "n_gen": n_gen, "reps": reps,
                  "threads": int(target.llama.context_params.n_threads), "rows": rows}
        if profile:
            use(None, None)
            report["costs"] = step_costs(target, engines, prompt)
            for row in rows:
                row["split"] = split_time(row, report["costs"], prompt_probe)
        return report
    finally:
        target.draft = None
        for eng in engines.values():
            eng.close()
        target.close()


def summarise(cfg: dict, alone: list[dict], drafted: list[dict]) -> dict:
    med = statistics.median
    proposed = sum(d["proposed"] for d in drafted)
    accepted = sum(d["accepted"] for d in drafted)
    tokens = [d["tokens"] for d in drafted]
    return {
        "draft": cfg["draft"], "draft_max": cfg["draft_max"],
        "draft_max_label": "adaptive" if cfg["draft_max"] is None else str(cfg["draft_max"]),
        "temperature": cfg["temperature"],
        "tokens": med(tokens), "alone_tokens": med(a["tokens"] for a in alone),
        "alone_tps": med(a["tps"] for a in alone), "tps": med(d["tps"] for d in drafted),
        "ratio": med(d["tps"] / a["tps"] for d, a in zip(drafted, alone)),
        "cpu_ratio": med(d["cpu_tps"] / a["cpu_tps"] for d, a in zip(drafted, alone)),
        "acceptance": accepted / proposed if proposed else 0.0,
        "proposed_per_run": proposed / len(drafted), "accepted_per_run": accepted / len(drafted),
        "seconds": med(d["seconds"] for d in drafted), "alone_seconds": med(a["seconds"] for a in alone),
        "target_positions_per_run": med(d["target_positions"] for d in drafted),
        "draft_positions_per_run": med(d["draft_positions"] for d in drafted),
        "runs": {"alone": alone, "drafted": drafted},
    }


# -- where the time goes (--profile) ---------------------------------------------------------

def _timed(fn, n: int) -> float:
    """Median seconds of `n` calls of fn()."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def step_costs(target, engines: dict, prompt: list[int], n: int = 15) -> dict:
    """Milliseconds of the target's decode of 1 token, of its all-logits batch of k tokens
    (the verification), and of each draft's decode of 1 token, after the prompt."""
    from llamactl.engine import bindings

    def after_prompt(engine) -> int:
        engine.reset()
        engine.llama.eval(prompt)
        return int(engine.llama.n_tokens)

    base = after_prompt(target)
    tok = prompt[-1]

    def verify(k: int):
        def go():
            bindings.eval_all_logits(target.llama, [tok] * k)
            bindings.truncate_cache(target.llama, base)
        return go

    def step(engine, keep: int):
        def go():
            engine.llama.eval([tok])
            bindings.truncate_cache(engine.llama, keep)
        return go

    costs = {"target_decode_ms": _timed(step(target, base), n) * 1e3,
             "target_verify_ms": {k: _timed(verify(k), n) * 1e3 for k in VERIFY_SIZES}}
    target.reset()
    costs["draft_decode_ms"] = {}
    costs["draft_prompt_ms"] = {}
    for name, eng in engines.items():
        costs["draft_prompt_ms"][name] = _timed(lambda: after_prompt(eng), 3) * 1e3
        keep = after_prompt(eng)
        costs["draft_decode_ms"][name] = _timed(step(eng, keep), n) * 1e3
        eng.reset()
    return costs


def _verify_ms(costs: dict, k: float) -> float:
    """Verification of a batch of k tokens, interpolated between the sizes measured."""
    pts = sorted(costs["target_verify_ms"].items())
    for (k0, v0), (k1, v1) in zip(pts, pts[1:]):
        if k <= k1:
            return v0 + (v1 - v0) * (k - k0) / (k1 - k0)
    return pts[-1][1]


def split_time(row: dict, costs: dict, prompt_tokens: int) -> dict:
    """The measured time of a run with the draft split by the step costs: the draft's
    evaluation of the prompt (in its first round) and its decodes, the target's
    verifications (rounds of [last token + drafted]), and the rest (Python, sampling)."""
    rounds = max(1.0, row["tokens"] - 1 - row["accepted_per_run"])   # each round gives accepted + 1
    batch = row["target_positions_per_run"] / rounds
    decodes = max(0.0, row["draft_positions_per_run"] - prompt_tokens)
    draft_ms = (decodes * costs["draft_decode_ms"][row["draft"]]
                + costs["draft_prompt_ms"][row["draft"]])
    verify_ms = rounds * _verify_ms(costs, batch)
    total_ms = row["seconds"] * 1e3
    return {"rounds": rounds, "mean_batch": batch, "draft_ms": draft_ms, "verify_ms": verify_ms,
            "other_ms": total_ms - draft_ms - verify_ms, "total_ms": total_ms,
            "alone_ms": row["alone_seconds"] * 1e3}


# -- report ------------------------------------------------------------------------------------

def render(doc: dict) -> str:
    lines = [f"{doc['n_gen']} tokens per run after a {doc['prompt_tokens']}-token prompt, "
             f"{doc['threads']} thread(s), median of {doc['reps']} interleaved pairs (alone, with draft)"]
    for g in doc["groups"]:
        lines += ["", render_group(g)]
    lines.append(f"\ngoal: >= {GOAL_RATIO}x where acceptance >= {GOAL_ACCEPTANCE * 100:.0f}% "
                 "('-': acceptance below that)")
    return "\n".join(lines)


def render_group(g: dict) -> str:
    m = g["models"]
    lines = [f"target {m['target']['name']} ({m['target']['bytes'] / 1e6:.0f} MB); drafts: "
             + ", ".join(f"{k} = {v['name']} ({v['bytes'] / 1e6:.0f} MB)" for k, v in m["drafts"].items())]
    w = max([5] + [len(r["draft"]) for r in g["rows"]])
    lines.append(f"{'draft':>{w}} {'draft-max':>9} {'temp':>4} {'alone t/s':>9} {'draft t/s':>9} "
                 f"{'ratio':>6} {'cpu x':>6} {'accept':>7} {'tokens':>6} {'goal':>5}")
    for r in g["rows"]:
        goal = ("met" if r["ratio"] >= GOAL_RATIO else "no") if r["acceptance"] >= GOAL_ACCEPTANCE else "-"
        lines.append(f"{r['draft']:>{w}} {r['draft_max_label']:>9} {r['temperature']:>4.1f} {r['alone_tps']:>9.2f} "
                     f"{r['tps']:>9.2f} {r['ratio']:>5.2f}x {r['cpu_ratio']:>5.2f}x "
                     f"{r['acceptance'] * 100:>6.1f}% {r['tokens']:>6.0f} {goal:>5}")
    if "costs" in g:
        c = g["costs"]
        lines.append(f"step costs: target decode of 1 token {c['target_decode_ms']:.1f} ms; verify batch of k: "
                     + ", ".join(f"{k}: {v:.1f} ms" for k, v in c["target_verify_ms"].items())
                     + "; draft decode " + ", ".join(f"{k} {v:.1f} ms" for k, v in c["draft_decode_ms"].items())
                     + "; draft prompt " + ", ".join(f"{k} {v:.0f} ms" for k, v in c["draft_prompt_ms"].items()))
        lines.append(f"{'draft':>{w}} {'draft-max':>9} {'temp':>4} {'rounds':>6} {'batch':>5} {'draft ms':>9} "
                     f"{'verify ms':>9} {'other ms':>8} {'total ms':>8} {'alone ms':>8}")
        for r in g["rows"]:
            s = r["split"]
            lines.append(f"{r['draft']:>{w}} {r['draft_max_label']:>9} {r['temperature']:>4.1f} {s['rounds']:>6.0f} "
                         f"{s['mean_batch']:>5.1f} {s['draft_ms']:>9.0f} {s['verify_ms']:>9.0f} "
                         f"{s['other_ms']:>8.0f} {s['total_ms']:>8.0f} {s['alone_ms']:>8.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="the target GGUF (default: the synthetic F32 one)")
    ap.add_argument("--draft", action="append", default=[], metavar="NAME=PATH",
                    help="a draft GGUF (repeatable; with --model). Default: q8_0, q4_0, poor")
    ap.add_argument("--draft-max", nargs="+", default=["4", "8", "adaptive"],
                    help="draft lengths to measure: numbers and/or 'adaptive'")
    ap.add_argument("--temperature", type=float, default=0.8,
                    help="the sampled rows' temperature (0: greedy rows only)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="tokens generated per run")
    ap.add_argument("-r", "--reps", type=int, default=3, help="interleaved pairs per configuration")
    ap.add_argument("-t", "--threads", type=int, default=1, help="threads of every model (default 1)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/specbench"), help="where synthetic models are kept")
    ap.add_argument("--n-embd", type=int, default=1024, help="synthetic models: hidden size")
    ap.add_argument("--n-layer", type=int, default=8, help="synthetic models: layers")
    ap.add_argument("--n-ff", type=int, default=3072, help="synthetic models: FFN size")
    ap.add_argument("--small-layers", type=int, default=2,
                    help="synthetic models: also measure a target whose layers from this one on are "
                         "nearly silent against its cheap draft of this many layers (0: skip)")
    ap.add_argument("--profile", action="store_true", help="also measure step costs and split the time")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    a = ap.parse_args(argv)

    if a.draft and not a.model:
        ap.error("--draft NAME=PATH needs --model")
    if a.model:
        if not a.draft:
            ap.error("--model needs at least one --draft NAME=PATH")
        target = a.model
        drafts = {}
        for spec in a.draft:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                ap.error(f"--draft takes NAME=PATH, not {spec!r}")
            drafts[name] = Path(path)
    else:
        models = build_models(a.work, n_embd=a.n_embd, n_layer=a.n_layer, n_ff=a.n_ff, threads=a.threads)
        target, drafts = models["target"], models["drafts"]

    groups = [(target, drafts)]
    if not a.model and a.small_layers:
        pair = build_small_pair(a.work, n_embd=a.n_embd, n_layer=a.n_layer, n_ff=a.n_ff,
                                small_layers=a.small_layers, threads=a.threads)
        groups.append((pair["target"], pair["drafts"]))
    report: dict = {"groups": []}
    for target, drafts in groups:
        configs = configurations(list(drafts), parse_draft_max(a.draft_max), a.temperature)
        g = measure(target, drafts, configs, reps=a.reps, n_gen=a.n_gen, threads=a.threads,
                    profile=a.profile)
        g["models"] = {
            "target": {"name": target.name, "bytes": target.stat().st_size},
            "drafts": {k: {"name": p.name, "bytes": p.stat().st_size} for k, p in drafts.items()},
        }
        for key in ("prompt_tokens", "n_gen", "reps", "threads"):
            report[key] = g.pop(key)
        report["groups"].append(g)
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
