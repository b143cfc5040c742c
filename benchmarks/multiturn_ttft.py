"""Multi-turn cost: time to first token of turn 10 against turn 1.

A conversation of ten turns, each new user message of the same length, goes through what
the REPL does for each message (fit the conversation to the context, render it, build the
prompt tokens as `Engine.stream_chat` does, stream the answer); the time to first token is
measured from the message to its first answer token. If each new turn reuses the KV cache of the
conversation so far, turn 10 evaluates about as many tokens as turn 1 and its time to first
token stays close; if the history were evaluated again, turn 10 would cost ten times more.
Goal: turn 10 / turn 1 <= 1.2.

    python benchmarks/multiturn_ttft.py                 # a synthetic Llama 3-shaped GGUF
    python benchmarks/multiturn_ttft.py --model X.gguf  # any GGUF

The synthetic model (random weights, byte-level BPE vocabulary with Llama 3's special
tokens and chat template; by default hidden size 1024, 8 layers, F32, ~400 MB) is built in
a temporary folder: big enough that evaluating a prompt costs real time on a CPU, so that
the weights rather than Python dominate as in a real model, small enough to build in
seconds. On a very small model attention over the longer history weighs relatively more
(and millisecond timings are noisy): `--n-embd 512` gave 0.86-1.2x over runs here, the
1024 default 0.87x and 1.09x in two runs (2 CPU cores shared with other work,
llama-cpp-python 0.3.36). The rendering and prompt building cost ~2 ms at turn 10; the
rest of the growth from turn 2 to 10 is attention over the longer cache. Each turn's answer is a
fixed number of generated tokens (ignoring end-of-turn) so every turn adds the same amount.
The ratio is of medians over several repetitions of the whole conversation (after one
warm-up conversation). For comparison it also times turn 10 with the cache cleared first,
which is what re-evaluating the history would cost.

Llama 4's KV cache modes (`--kv-cache`, see README "Long contexts"): with `--arch llama4` the
synthetic model is a tiny Llama 4 (tests/synthetic/tiny.py: 4 layers, 3 chunked and 1
global, hidden 256, 4 experts) and `--kv-cache full,chunked` runs the conversation once per
mode and reports turn 10's TTFT for each; give long messages (`--message-tokens 1000
--ctx 16384`) so that the conversation passes the 8192-token chunk and the chunked cache's
window is really used:

    python benchmarks/multiturn_ttft.py --arch llama4 --kv-cache chunked,full \
        --message-tokens 1000 --answer-tokens 16 --ctx 16384 --reps 2 --threads 2

Measured so (2 shared CPU cores, llama-cpp-python 0.3.36): turn 10 (10,475 prompt tokens,
1,034 evaluated in both modes) waited 643 ms with the chunked cache and 649 ms with the full
one; an earlier run with other work on the machine gave 2929 vs 704 ms, with the chunked
run's every turn slowed alike (turn 1: 3307 vs 121 ms), so contention, not the cache. On this
tiny model attention over the 10k-token history outweighs the weights, hence turn 10 / turn
1 of about 6x even with every turn evaluating the same ~1030 tokens; evaluating the history
again costs 5-6x more than that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|eom_id|>"]


def _byte_chars() -> list[str]:
    # GPT-2's reversible byte -> printable character mapping (byte-level BPE alphabet).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def build_synthetic_gguf(path: Path, *, n_embd: int = 512, n_layer: int = 8, n_head: int = 8,
                         n_head_kv: int = 4, n_ff: int = 1536, n_ctx_train: int = 8192,
                         seed: int = 0, loud_layers: int | None = None, quiet_std: float = 0.002) -> Path:
    """Write a random-weight Llama 3-shaped F32 GGUF (llama.cpp loads and runs it).

    `loud_layers` k: the layers from k on write to the residual stream with `quiet_std`
    (their attn_output and ffn_down; the other weights as usual) and draw from a generator of
    their own, so that the model computes as much as any but its output is nearly that of
    the same seed's k-layer model: a cheap draft that agrees with it (benchmarks/speculative.py)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    quiet_rng = np.random.default_rng([seed, 1])
    byte_chars = _byte_chars()
    tokens = list(byte_chars)
    merges = []
    space = byte_chars[ord(" ")]
    for a, b in [(space, "t"), (space, "a"), ("h", "e"), ("i", "n"), ("r", "e"), ("o", "n"),
                 (space + "t", "he"), ("e", "r"), (space, "s"), ("a", "t")]:
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    n_normal = len(tokens)
    tokens += SPECIALS
    types = [1] * n_normal + [3] * len(SPECIALS)
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("synthetic-llama3")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(n_normal + SPECIALS.index("<|begin_of_text|>"))
    w.add_eos_token_id(n_normal + SPECIALS.index("<|eot_id|>"))
    w.add_add_bos_token(True)
    w.add_chat_template(LLAMA3_TEMPLATE)

    def t(name: str, *shape: int, std: float = 0.05, ones: bool = False, gen=None) -> None:
        arr = (np.ones(shape, dtype=np.float32) if ones
               else (gen or rng).normal(0, std, size=shape).astype(np.float32))
        w.add_tensor(name, arr)

    head_dim = n_embd // n_head
    t("token_embd.weight", n_vocab, n_embd)
    for i in range(n_layer):
        quiet = loud_layers is not None and i >= loud_layers
        gen = quiet_rng if quiet else rng
        out_std = quiet_std if quiet else 0.05
        t(f"blk.{i}.attn_norm.weight", n_embd, ones=True)
        t(f"blk.{i}.attn_q.weight", n_embd, n_embd, gen=gen)
        t(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd, gen=gen)
        t(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd, gen=gen)
        t(f"blk.{i}.attn_output.weight", n_embd, n_embd, std=out_std, gen=gen)
        t(f"blk.{i}.ffn_norm.weight", n_embd, ones=True)
        t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd, gen=gen)
        t(f"blk.{i}.ffn_up.weight", n_ff, n_embd, gen=gen)
        t(f"blk.{i}.ffn_down.weight", n_embd, n_ff, std=out_std, gen=gen)
    t("output_norm.weight", n_embd, ones=True)
    t("output.weight", n_vocab, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


WORDS = ("the quick brown fox jumps over a lazy dog while seven tired sailors read maps "
         "about distant rivers and quiet mountain towns").split()


def _message(engine, turn: int, n_tokens: int) -> str:
    """A user message of about `n_tokens` tokens, different for each turn."""
    words, i = [], turn
    while True:
        words.append(WORDS[i % len(WORDS)])
        i += 7
        if len(engine.tokenize(" ".join(words))) >= n_tokens:
            return f"({turn}) " + " ".join(words)


def run_conversation(engine, *, turns: int, message_tokens: int, answer_tokens: int) -> list[dict]:
    """One conversation as the REPL runs it (fit the context, render, build the prompt
    tokens, stream): per turn, the time from the message to its first answer token and the
    tokens evaluated; for the last turn also the time to first token when the cache is
    cleared first (the cost of evaluating the whole history again)."""
    import time

    from llamactl.chat.conversation import Conversation, answer_reserve, fit_to_context
    from llamactl.engine import Piece, Sampling

    engine.reset()
    sampling = Sampling(temperature=0, max_tokens=answer_tokens)
    conv = Conversation(system="You are a helpful assistant.")
    rows = []
    for turn in range(1, turns + 1):
        conv.add("user", _message(engine, turn, message_tokens))
        t0 = time.perf_counter()
        fit_to_context(conv, engine.count_chat_tokens, engine.n_ctx,
                       answer_reserve(engine.n_ctx, sampling.max_tokens))
        tokens = engine.chat_tokens(conv.as_messages())     # exactly what stream_chat does
        pieces, stats, first = [], None, None
        for item in engine.stream_tokens(tokens, sampling, ignore_eos=True):
            if isinstance(item, Piece):
                if first is None:
                    first = time.perf_counter()
                pieces.append(item.text)
            else:
                stats = item
        conv.add("assistant", "".join(pieces))
        rows.append({"turn": turn, "ttft": first - t0, "prompt_tokens": stats.prompt_tokens,
                     "evaluated": stats.prompt_tokens_evaluated})
    fresh = None
    for item in engine.stream_tokens(tokens, Sampling(temperature=0, max_tokens=1), reuse_cache=False):
        fresh = item
    rows[-1]["ttft_without_reuse"] = fresh.ttft_seconds
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file (default: build a synthetic one)")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--message-tokens", type=int, default=64)
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--flash-attn", action="store_true", help="use flash attention")
    parser.add_argument("--n-embd", type=int, default=1024, help="synthetic model: hidden size")
    parser.add_argument("--n-layer", type=int, default=8, help="synthetic model: layers")
    parser.add_argument("--arch", choices=("llama", "llama4"), default="llama",
                        help="synthetic model: Llama 3-shaped (default) or a tiny Llama 4")
    parser.add_argument("--kv-cache", default="full",
                        help="comma-separated KV cache modes to run (full, chunked, auto; Llama 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.kv_cache.split(",") if m.strip()]
    docs = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = Path(args.model)
        elif args.arch == "llama4":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.synthetic.tiny import write_tiny_gguf

            model = write_tiny_gguf(Path(tmp) / "synthetic-llama4.gguf", arch="llama4", n_layer=4,
                                    n_expert=4, n_expert_used=2, n_ctx_train=65536)
        else:
            model = build_synthetic_gguf(
                Path(tmp) / "synthetic.gguf", n_embd=args.n_embd, n_layer=args.n_layer,
                n_head=args.n_embd // 64, n_head_kv=max(1, args.n_embd // 256), n_ff=args.n_embd * 3)
        for mode in modes:
            docs.append(run_mode(args, model, mode))
    if args.json:
        print(json.dumps(docs[0] if len(docs) == 1 else {"modes": docs}, indent=2))
        return 0
    for doc in docs:
        last = args.turns
        print(f"model: {doc['model']}, KV cache {doc['kv_cache']}")
        print(f"{'turn':>4} {'prompt':>7} {'evaluated':>9} {'TTFT ms':>9}")
        for row in doc["per_turn"]:
            print(f"{row['turn']:>4} {row['prompt_tokens']:>7} {row['evaluated']:>9} {row['ttft_ms']:>9.1f}")
        print(f"turn {last} with the cache cleared first: {doc['ttft_ms_last_turn_without_reuse']:.1f} ms")
        print(f"tokens evaluated, turn {last} / turn 1: {doc['evaluated_ratio_turn_last_vs_first']}x")
        print(f"turn {last} / turn 1 TTFT: {doc['ratio_turn_last_vs_first']}x with KV reuse "
              f"(goal <= 1.2x); {doc['ratio_without_reuse']}x re-evaluating the history")
    if len(docs) > 1:
        print("turn {} TTFT: ".format(args.turns) + ", ".join(
            f"{d['kv_cache']} {d['per_turn'][-1]['ttft_ms']:.1f} ms" for d in docs))
    return 0


def run_mode(args: argparse.Namespace, model: Path, mode: str) -> dict:
    """The conversation (warm-up, then `args.reps` repetitions) with KV cache mode `mode`."""

    from llamactl.engine import Engine, EngineOptions
    from llamactl.load import LoadSpec

    engine = Engine.load(model, EngineOptions(load=LoadSpec(ctx=args.ctx, threads=args.threads,
                                                        flash_attn=args.flash_attn, kv_cache=mode)))
    kv_cache = engine.plan.kv_cache
    try:
        kw = dict(turns=args.turns, message_tokens=args.message_tokens, answer_tokens=args.answer_tokens)
        run_conversation(engine, **kw)                                  # warm-up
        reused = [run_conversation(engine, **kw) for _ in range(args.reps)]
    finally:
        engine.close()

    def med(runs, turn, key):
        return statistics.median(r[turn - 1][key] for r in runs)

    last = args.turns
    synthetic = ("synthetic Llama 4 (tiny: 4 layers, hidden 256, F32)" if args.arch == "llama4"
                 else f"synthetic (n_embd {args.n_embd}, {args.n_layer} layers, F32)")
    doc = {
        "model": str(args.model or synthetic), "kv_cache": kv_cache,
        "flash_attn": args.flash_attn,
        "turns": args.turns, "message_tokens": args.message_tokens, "answer_tokens": args.answer_tokens,
        "reps": args.reps,
        "per_turn": [{"turn": t, "ttft_ms": round(1000 * med(reused, t, "ttft"), 2),
                      "prompt_tokens": reused[0][t - 1]["prompt_tokens"],
                      "evaluated": reused[0][t - 1]["evaluated"]}
                     for t in range(1, last + 1)],
        "ttft_ms_last_turn_without_reuse": round(1000 * med(reused, last, "ttft_without_reuse"), 2),
    }
    doc["ratio_turn_last_vs_first"] = round(med(reused, last, "ttft") / med(reused, 1, "ttft"), 3)
    doc["ratio_without_reuse"] = round(med(reused, last, "ttft_without_reuse") / med(reused, 1, "ttft"), 3)
    doc["evaluated_ratio_turn_last_vs_first"] = round(
        reused[0][last - 1]["evaluated"] / reused[0][0]["evaluated"], 3)
    doc["goal"] = 1.2
    return doc


if __name__ == "__main__":
    sys.exit(main())
