"""`llamactl serve` in a subprocess for tests: started on port 0, its base URL read from its
one stdout line, ready once /health says so; stderr (the access log) kept in a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


class Server:
    def __init__(self, args: list[str], log: Path, env: dict | None = None, timeout: float = 120):
        self.log_path = log
        self._log = open(log, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llamactl", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, env=full_env, cwd=REPO)
        line = self.proc.stdout.readline().decode().strip()   # blocks until the URL (or exit)
        if not line:
            self.proc.wait(timeout=30)
            raise AssertionError(f"serve exited {self.proc.returncode} before printing its URL:\n{self.stderr}")
        self.url = line                      # http://127.0.0.1:PORT/v1
        self.root = line.removesuffix("/v1")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.get("/health")
            if status == 200:
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.stderr}")
            time.sleep(0.1)
        else:
            raise AssertionError(f"serve never became ready:\n{self.stderr}")

    @property
    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.root + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def post(self, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, dict]:
        req = urllib.request.Request(self.root + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")

    def wait_idle(self, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.get("/health")
            if all(m.get("busy") == 0 for m in body.get("models", [])):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"slots still busy: {body}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
