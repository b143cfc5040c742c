"""The loopback Hub's fixtures (loaded as a pytest plugin by tests/conftest.py).

- `hubsim`: a started `HubSim` (tests/hubsim/server.py) with HF_ENDPOINT pointed at it and
  HF_HUB_OFFLINE off, for this test (and the CLI subprocesses it runs). Add repositories
  with `hubsim.add_repo(repo_id, {filename: bytes | Path}, license=..., gated=...)`; read
  `hubsim.log` / `hubsim.requests(...)`; flip faults (`cut_after`, `fail_after_cut`,
  `corrupt`, `slow`).
- `small_gguf(path, *, tensor_bytes=4096, name=..., license=..., split=None)` -> list[Path]:
  writes a small valid GGUF (llama architecture metadata, one or more F32 tensors);
  `split=(n)` writes n parts named `...-0000i-of-0000n.gguf` with the split keys.
- `big_gguf`: a session-scoped GGUF just over 12 MiB (huggingface_hub writes in 10 MiB
  chunks, so interrupting it leaves bytes to resume from).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hubsim.server import HubSim


@pytest.fixture
def hubsim(tmp_path, monkeypatch):
    sim = HubSim(tmp_path / "hubsim-files").start()
    monkeypatch.setenv("HF_ENDPOINT", sim.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "20")
    try:
        yield sim
    finally:
        sim.stop()


def write_gguf(path: Path, *, tensor_elements: list[int], name: str = "Tiny Llama",
               license: str | None = None, split: tuple[int, int, int] | None = None,
               context_length: int = 2048, chat_template: bool = True) -> Path:
    import numpy as np
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_file_type(0)  # ALL_F32
    w.add_context_length(context_length)
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_head_count(4)
    if license:
        w.add_license(license)
    if chat_template:
        w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    if split is not None:
        no, count, total_tensors = split
        w.add_uint16("split.no", no)
        w.add_uint16("split.count", count)
        w.add_int32("split.tensors.count", total_tensors)
    base = split[0] * 100 if split else 0
    for i, n in enumerate(tensor_elements):
        data = (np.arange(n, dtype=np.float32) * 0.001 + i + base).astype(np.float32)
        w.add_tensor(f"blk.{base + i}.weight", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def small_gguf():
    def make(path: Path, *, tensor_bytes: int = 4096, name: str = "Tiny Llama",
             license: str | None = None, split: int | None = None) -> list[Path]:
        path = Path(path)
        if not split:
            return [write_gguf(path, tensor_elements=[tensor_bytes // 4], name=name, license=license)]
        stem = path.name[:-5] if path.name.endswith(".gguf") else path.name
        parts = []
        for i in range(split):
            part = path.with_name(f"{stem}-{i + 1:05d}-of-{split:05d}.gguf")
            parts.append(write_gguf(part, tensor_elements=[tensor_bytes // 4], name=name,
                                    license=license, split=(i, split, split)))
        return parts

    return make


@pytest.fixture(scope="session")
def big_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hubsim-big") / "big.gguf"
    return write_gguf(path, tensor_elements=[(12 << 20) // 4 + 1024])
