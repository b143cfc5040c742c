"""`llamactl serve` under load: aggregate tokens/s and time to first token for 1, 2, 4 and 8
concurrent clients, against the same requests sent one after another; resident memory after
1,000 requests against after 10.

    python benchmarks/serve_load.py                      # a synthetic ~260 MB Llama 3-shaped GGUF
    python benchmarks/serve_load.py --model X.gguf       # any GGUF
    python benchmarks/serve_load.py --llama-server PATH  # the same load on llama.cpp's llama-server -np N

The server runs as users run it (`llamactl serve MODEL --port 0 --parallel 4`, a subprocess);
each client is a thread that streams chat completions over plain HTTP (distinct prompts of
about 64 tokens, 64 answer tokens at temperature 0) and records the time to the first
content chunk. Aggregate tokens/s is the completion tokens of every request of a round over
the round's wall time. "sequential" sends the same requests one after another. Resident
memory is the server process's VmRSS after 10 requests and after 1,000 short ones.

llama-server is not built here: give `--llama-server` the binary built from the llama.cpp
that llama-cpp-python vendors (its sdist holds the source: `cmake -B build -DGGML_NATIVE=OFF
-DLLAMA_CURL=OFF && cmake --build build --target llama-server`). Not run in CI.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = ("llama alpaca mountain river valley cloud stone forest meadow ocean desert glacier "
         "village market bridge tower garden harbor island canyon").split()


def prompt_text(i: int, words: int = 8) -> str:
    body = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(words))
    return f"Request {i}: tell a story about {body}."


def stream_chat(base: str, model: str, content: str, max_tokens: int, key: str | None = None) -> dict:
    """One streamed chat completion: {ttft, seconds, completion_tokens}."""
    url = urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}})
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    started = time.perf_counter()
    conn.request("POST", url.path.rstrip("/") + "/chat/completions", body=body, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft = None
    usage = None
    pieces = 0
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        doc = json.loads(data)
        if doc.get("usage"):
            usage = doc["usage"]
        for choice in doc.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                pieces += 1
                if ttft is None:
                    ttft = time.perf_counter() - started
    seconds = time.perf_counter() - started
    conn.close()
    tokens = usage["completion_tokens"] if usage else pieces
    return {"ttft": ttft if ttft is not None else seconds, "seconds": seconds, "completion_tokens": tokens}


def run_round(base: str, model: str, clients: int, per_client: int, max_tokens: int, first: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(c: int) -> None:
        barrier.wait()
        for r in range(per_client):
            out = stream_chat(base, model, prompt_text(first + c * per_client + r), max_tokens)
            with lock:
                results.append(out)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return _summary(results, wall, clients)


def run_sequential(base: str, model: str, n: int, max_tokens: int, first: int) -> dict:
    started = time.perf_counter()
    results = [stream_chat(base, model, prompt_text(first + i), max_tokens) for i in range(n)]
    return _summary(results, time.perf_counter() - started, 1)


def _summary(results: list[dict], wall: float, clients: int) -> dict:
    ttfts = sorted(r["ttft"] for r in results)
    tokens = sum(r["completion_tokens"] for r in results)

    def pct(p: float) -> float:
        return ttfts[min(len(ttfts) - 1, int(round(p * (len(ttfts) - 1))))]

    return {"clients": clients, "requests": len(results), "completion_tokens": tokens,
            "seconds": wall, "tokens_per_second": tokens / wall if wall > 0 else 0.0,
            "ttft_p50": statistics.median(ttfts), "ttft_p95": pct(0.95)}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_growth(base: str, model: str, pid: int, total: int, clients: int = 4) -> dict:
    """VmRSS after 10 requests and after `total` (short answers, distinct prompts)."""
    def send(indices: list[int]) -> None:
        for i in indices:
            stream_chat(base, model, prompt_text(10_000 + i, words=12), 4)

    def parallel(indices: list[int]) -> None:
        chunks = [indices[c::clients] for c in range(clients)]
        threads = [threading.Thread(target=send, args=(chunk,)) for chunk in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    parallel(list(range(10)))
    after_10 = rss_bytes(pid)
    parallel(list(range(10, total)))
    after_total = rss_bytes(pid)
    return {"requests": total, "rss_after_10": after_10, "rss_after_total": after_total,
            "growth": after_total / after_10 - 1 if after_10 else 0.0}


class Served:
    """A server subprocess: llamactl serve, or llama-server."""

    def __init__(self, cmd: list[str], *, url: str | None = None, log: Path):
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if url is None else subprocess.DEVNULL,
                                     stderr=self._log, stdin=subprocess.DEVNULL)
        if url is None:
            url = self.proc.stdout.readline().decode().strip()
            if not url:
                raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        self.url = url
        root = url.removesuffix("/v1")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                u = urlparse(root)
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError("the server never became ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def measure(base: str, model: str, args: argparse.Namespace, pid: int | None) -> dict:
    stream_chat(base, model, prompt_text(0), 8)                 # warm-up
    seq = run_sequential(base, model, args.sequential, args.max_tokens, first=100)
    rounds = [run_round(base, model, c, args.per_client, args.max_tokens, first=1000 * c)
              for c in args.clients]
    out = {"sequential": seq, "rounds": rounds}
    if pid is not None and args.memory_requests:
        out["memory"] = memory_growth(base, model, pid, args.memory_requests)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file (default: build a synthetic ~260 MB one)")
    parser.add_argument("--parallel", type=int, default=4, help="slots (llama-server: -np)")
    parser.add_argument("--ctx", type=int, default=1024, help="context of one slot")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--per-client", type=int, default=3, help="requests each client sends")
    parser.add_argument("--sequential", type=int, default=6, help="requests sent one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--memory-requests", type=int, default=1000, help="0: skip the memory check")
    parser.add_argument("--llama-server", help="also run the load against this llama-server binary")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    from multiturn_ttft import build_synthetic_gguf

    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = Path(args.model) if args.model else build_synthetic_gguf(
            tmp_path / "synthetic.gguf", n_embd=1024, n_layer=5, n_head=16, n_head_kv=4, n_ff=3072)
        report["model"] = {"path": str(model), "bytes": model.stat().st_size}
        threads = ["--threads", str(args.threads)] if args.threads else []
        env_home = tmp_path / "home"
        os.environ.setdefault("LLAMACTL_HOME", str(env_home))
        served = Served([sys.executable, "-m", "llamactl", "serve", str(model), "--port", "0",
                         "--parallel", str(args.parallel), "--ctx", str(args.ctx), *threads],
                        log=tmp_path / "serve.log")
        try:
            report["llamactl"] = measure(served.url, model.stem, args, served.proc.pid)
        finally:
            served.stop()
        if args.llama_server:
            port = _free_port()
            cmd = [args.llama_server, "-m", str(model), "--port", str(port), "--host", "127.0.0.1",
                   "-np", str(args.parallel), "-c", str(args.parallel * args.ctx), *(["-t", str(args.threads)] if args.threads else [])]
            ls = Served(cmd, url=f"http://127.0.0.1:{port}/v1", log=tmp_path / "llama-server.log")
            try:
                report["llama_server"] = measure(ls.url, model.stem, args, ls.proc.pid)
            finally:
                ls.stop()

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model: {report['model']['path']} ({report['model']['bytes'] / 1e6:.0f} MB), "
          f"{args.parallel} slots, {args.max_tokens} tokens per answer")
    for name in ("llamactl", "llama_server"):
        if name not in report:
            continue
        r = report[name]
        base = r["sequential"]["tokens_per_second"]
        print(f"\n{name}: sequential {base:.1f} tok/s, TTFT p50 {r['sequential']['ttft_p50'] * 1000:.0f} ms")
        print(f"{'clients':>7} {'requests':>8} {'tok/req':>7} {'tok/s':>8} {'x seq':>6} {'TTFT p50':>9} {'TTFT p95':>9}")
        for row in r["rounds"]:
            print(f"{row['clients']:>7} {row['requests']:>8} {row['completion_tokens'] / row['requests']:>7.1f} "
                  f"{row['tokens_per_second']:>8.1f} "
                  f"{row['tokens_per_second'] / base if base else 0:>6.2f} {row['ttft_p50'] * 1000:>7.0f}ms "
                  f"{row['ttft_p95'] * 1000:>7.0f}ms")
        if "memory" in r:
            m = r["memory"]
            print(f"RSS after 10 requests {m['rss_after_10'] / 2**20:.0f} MiB, after {m['requests']} "
                  f"{m['rss_after_total'] / 2**20:.0f} MiB ({m['growth'] * 100:+.1f}%)")
    if "llama_server" in report:
        ours = {row["clients"]: row["tokens_per_second"] for row in report["llamactl"]["rounds"]}
        theirs = {row["clients"]: row["tokens_per_second"] for row in report["llama_server"]["rounds"]}
        print("\nllamactl / llama-server tok/s: " + ", ".join(
            f"{c} clients {ours[c] / theirs[c]:.2f}x" for c in ours if theirs.get(c)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
