"""The GPU kit: what a bare, offline GPU machine needs beside the repository to build and
run the GPU check (benchmarks/gpu/run.sh), gathered on an ordinary machine with a network.

    python benchmarks/gpu/kit.py prepare KIT_DIR [--sdist FILE] [--max-mib 48]

KIT_DIR receives:
  src/llama_cpp_python-<ver>.tar.gz   the pinned sdist, trimmed: no vocabulary test GGUFs,
                                      web UI, docs, examples/tests, or ggml backends other
                                      than CPU and CUDA
  wheels/*.whl                        llamactl itself, and the pure-Python packages that
                                      llamactl and llama-cpp-python need and the GPU
                                      machine lacks (CPython 3.12, manylinux x86-64)
  manifest.json                       what is where, what was trimmed, sizes, sha256s
The kit's total size is printed; over --max-mib (48 MiB: what travels beside the repository)
it fails with exit 1 and names the largest parts.

The sdist comes from `pip download --no-binary :all: --no-deps llama-cpp-python==PIN`
(checked against its pinned sha256) and is kept in LLAMACTL_GPUKIT_CACHE (default
~/.cache/llamactl-gpukit) so that a second prepare does not download it again; --sdist
uses a local file instead (its sha256 is recorded, not required to match)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LLAMA_CPP_PYTHON = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MAX_MIB = 48
PY_VERSION = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]

# What the GPU machine's Python 3.12 already has (the 'cuda' image's package list, read on
# 2026-11-17: /work/.library/device/KINDS.md). A requirement whose name is here is taken
# from that machine; anything else llamactl or llama-cpp-python needs travels as a wheel.
GPU_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
build certifi charset-normalizer click cloudpickle cmake colorama cython filelock
flatbuffers fsspec h11 hf-xet httpcore httpx huggingface-hub idna iniconfig jinja2 joblib
markdown markdown-it-py markupsafe mdurl meson ml-dtypes mpmath msgpack multidict
mypy-extensions nanobind networkx ninja numpy nvidia-ml-py packaging pandas pathspec
pillow pip pluggy portalocker propcache protobuf psutil py-cpuinfo pybind11 pygments
pyparsing pyproject-hooks pytest python-dateutil pyyaml regex requests rich safetensors
scikit-build-core scipy sentencepiece setuptools shellingham simplejson six
sortedcontainers sympy tabulate tiktoken tokenizers toolz torch tqdm transformers triton
typer typing-extensions typing-inspect urllib3 uvloop werkzeug wheel wrapt xxhash yarl
zipp
""".split())

# Removed from the sdist (paths relative to its top folder). Vocabulary GGUFs, the web UI,
# docs, backends the check does not build, and what no part of the build reads: the git
# history (38 MB; llama.cpp's build info then says "unknown" commit), tests, examples,
# mtmd's sample media.
_V = "vendor/llama.cpp/"
TRIM_DIRS = [
    ".git", _V + ".git", "docs", "examples", "tests", "docker",
    _V + "docs", _V + "examples", _V + "tests", _V + "benches", _V + "media", _V + "pocs",
    _V + "gguf-py", _V + "app", _V + "skills", _V + "ci",
    _V + "tools/ui", _V + "tools/server",
] + [_V + f"ggml/src/ggml-{b}" for b in (
    "blas", "cann", "et", "hexagon", "hip", "metal", "musa", "opencl", "openvino", "rpc",
    "sycl", "virtgpu", "vulkan", "webgpu", "zdnn", "zendnn")]
TRIM_FILE_RE = re.compile(r"^vendor/llama\.cpp/(models/ggml-vocab-[^/]*"
                          r"|tools/mtmd/[^/]*\.(mp3|mp4|jpe?g|png|wav))$")
# the tools llama-cpp-python builds: only mtmd (the image path); the rest go
KEEP_TOOLS = {"mtmd", "CMakeLists.txt"}
# what must survive the trimming, or the build cannot work
REQUIRED = [
    "pyproject.toml", "CMakeLists.txt", "llama_cpp/__init__.py", "llama_cpp/llama_cpp.py",
    _V + "CMakeLists.txt", _V + "src/llama.cpp", _V + "common/CMakeLists.txt",
    _V + "ggml/src/ggml-cpu/CMakeLists.txt", _V + "ggml/src/ggml-cuda/CMakeLists.txt",
    _V + "ggml/src/ggml-cuda/ggml-cuda.cu", _V + "tools/mtmd/CMakeLists.txt",
]


class KitError(Exception):
    """A prepare step failed; the message says which and why."""


def _log(msg: str) -> None:
    print(f"[prepare] {msg}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trimmed(rel: str) -> bool:
    """True when the sdist member at `rel` (relative to the sdist's top folder) is dropped."""
    if TRIM_FILE_RE.match(rel):
        return True
    for d in TRIM_DIRS:
        if rel == d or rel.startswith(d + "/"):
            return True
    tools = _V + "tools/"
    if rel.startswith(tools):
        first = rel[len(tools):].split("/", 1)[0]
        return first not in KEEP_TOOLS
    return False


def trim_sdist(src: Path, dest: Path) -> dict:
    """Copy the sdist at `src` to `dest` (a .tar.gz) without the trimmed members. Returns
    counts and bytes (uncompressed) kept and removed, by top-level reason."""
    kept = removed = 0
    kept_bytes = removed_bytes = 0
    removed_by: dict[str, int] = {}
    names: set[str] = set()
    top = None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    with tarfile.open(src, "r:*") as tin, tarfile.open(tmp, "w:gz", compresslevel=6) as tout:
        for m in tin:
            parts = m.name.split("/", 1)
            top = top or parts[0]
            rel = parts[1] if len(parts) > 1 else ""
            if rel and trimmed(rel):
                removed += 1
                removed_bytes += m.size
                key = next((d for d in TRIM_DIRS if rel == d or rel.startswith(d + "/")), None)
                if key is None:
                    key = ("vendor/llama.cpp/tools/(not mtmd)" if not TRIM_FILE_RE.match(rel)
                           else "vendor/llama.cpp/models/ggml-vocab-*" if "/models/" in rel
                           else "vendor/llama.cpp/tools/mtmd/(media)")
                removed_by[key] = removed_by.get(key, 0) + m.size
                continue
            if not (m.isfile() or m.isdir() or m.issym()):
                continue
            kept += 1
            kept_bytes += m.size
            names.add(rel)
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    missing = [r for r in REQUIRED if r not in names]
    if missing:
        tmp.unlink()
        raise KitError(f"{src.name}: the trimmed source lacks {', '.join(missing)} "
                       "(is it the llama-cpp-python sdist?)")
    os.replace(tmp, dest)
    return {"top": top, "kept_files": kept, "kept_bytes": kept_bytes, "removed_files": removed,
            "removed_bytes": removed_bytes,
            "removed_by": dict(sorted(removed_by.items(), key=lambda kv: -kv[1]))}


def _pip(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise KitError(f"pip {' '.join(args[:2])} failed ({proc.returncode}): " + " | ".join(tail))
    return proc


def fetch_sdist(cache: Path) -> Path:
    """The pinned sdist, from the cache or downloaded by pip; its sha256 is checked."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / SDIST_NAME
    if path.exists() and sha256(path) == SDIST_SHA256:
        _log(f"sdist from cache: {path}")
        return path
    with tempfile.TemporaryDirectory(prefix="gpukit-sdist-") as tmp:
        _log(f"pip download --no-binary :all: --no-deps llama-cpp-python=={LLAMA_CPP_PYTHON}")
        _pip("download", "--no-binary", ":all:", "--no-deps", "--quiet", "-d", tmp,
             f"llama-cpp-python=={LLAMA_CPP_PYTHON}")
        got = Path(tmp) / SDIST_NAME
        if not got.exists():
            raise KitError(f"pip download did not produce {SDIST_NAME}: {os.listdir(tmp)}")
        digest = sha256(got)
        if digest != SDIST_SHA256:
            raise KitError(f"{SDIST_NAME}: sha256 {digest}, expected {SDIST_SHA256}")
        shutil.move(str(got), path)
    return path


def _req_names(dist: str) -> list[str]:
    """Names of the non-extra requirements of an installed distribution."""
    out = []
    for r in md.requires(dist) or []:
        if "extra ==" in r:
            continue
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)", r)
        if m:
            out.append(m.group(1))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project_requirements() -> list[str]:
    """llamactl's runtime requirements, from pyproject.toml (names only)."""
    import tomllib

    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [re.match(r"\s*([A-Za-z0-9_.\-]+)", r).group(1) for r in doc["project"]["dependencies"]]


def wheels_needed() -> dict[str, str | None]:
    """{distribution: version or None} that must travel: every requirement (transitively,
    through the packages that travel) of llamactl and llama-cpp-python that the GPU machine
    lacks, pinned to the version installed here where there is one."""
    llama_reqs = ["typing-extensions", "numpy", "diskcache", "jinja2"]
    todo = [n for n in _project_requirements() if _norm(n) != "llama-cpp-python"] + llama_reqs
    need: dict[str, str | None] = {}
    while todo:
        name = _norm(todo.pop())
        if name in GPU_HAS or name in need or name == "llama-cpp-python":
            continue
        try:
            need[name] = md.version(name)
            todo += _req_names(name)
        except md.PackageNotFoundError:
            need[name] = None
    return dict(sorted(need.items()))


def download_wheels(need: dict[str, str | None], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    if not need:
        return []
    specs = [f"{n}=={v}" if v else n for n, v in need.items()]
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    _log("pip download (cp312 manylinux x86-64 wheels): " + " ".join(specs))
    _pip("download", "--no-deps", "--only-binary", ":all:", "--python-version", PY_VERSION,
         "--implementation", "cp", *plat, "--quiet", "-d", str(dest), *specs)
    return sorted(dest.glob("*.whl"))


def build_llamactl_wheel(dest: Path) -> Path:
    """A wheel of this checkout's llamactl (its package and metadata files only)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpukit-llamactl-") as tmp:
        t = Path(tmp) / "src"
        t.mkdir()
        for f in ("pyproject.toml", "README.md", "LICENSE"):
            if (REPO / f).exists():
                shutil.copy2(REPO / f, t / f)
        shutil.copytree(REPO / "llamactl", t / "llamactl",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _log("pip wheel llamactl (this checkout)")
        _pip("wheel", "--no-deps", "--quiet", "-w", str(dest), str(t))
    found = sorted(dest.glob("llamactl-*.whl"))
    if not found:
        raise KitError("pip wheel produced no llamactl wheel")
    return found[-1]


def source_digest(root: Path = REPO) -> str:
    """sha256 over llamactl's source files (paths and contents): tells a stale kit."""
    h = hashlib.sha256()
    for p in sorted((root / "llamactl").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_size(kit: Path, max_mib: float) -> int:
    """The kit's size in bytes; raises KitError naming the largest files when over."""
    total = folder_bytes(kit)
    if total > max_mib * 1024 * 1024:
        big = sorted((p for p in kit.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)[:5]
        names = ", ".join(f"{p.relative_to(kit)} {p.stat().st_size / 2**20:.1f} MiB" for p in big)
        raise KitError(f"the kit is {total / 2**20:.1f} MiB, over the {max_mib:g} MiB limit "
                       f"(largest: {names})")
    return total


def prepare(kit: Path, *, sdist: Path | None = None, max_mib: float = MAX_MIB,
            cache: Path | None = None) -> dict:
    t0 = time.monotonic()
    kit = Path(kit)
    if kit.exists():
        shutil.rmtree(kit)
    (kit / "src").mkdir(parents=True)
    if sdist is None:
        cache = cache or Path(os.environ.get("LLAMACTL_GPUKIT_CACHE",
                                             Path.home() / ".cache" / "llamactl-gpukit"))
        sdist = fetch_sdist(cache)
    sdist = Path(sdist)
    _log(f"trimming {sdist.name} ({sdist.stat().st_size / 2**20:.1f} MiB)")
    trim = trim_sdist(sdist, kit / "src" / SDIST_NAME)
    need = wheels_needed()
    wheels = download_wheels(need, kit / "wheels")
    own = build_llamactl_wheel(kit / "wheels")
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "llama_cpp_python": LLAMA_CPP_PYTHON,
        "sdist": {"name": sdist.name, "sha256": sha256(sdist), "bytes": sdist.stat().st_size,
                  "pinned_sha256": SDIST_SHA256},
        "source": {"path": f"src/{SDIST_NAME}", "top": trim["top"],
                   "bytes": (kit / "src" / SDIST_NAME).stat().st_size, "trim": trim},
        "wheels": [w.name for w in wheels if w != own],
        "wheels_needed": need,
        "llamactl_wheel": own.name,
        "llamactl_source_sha256": source_digest(),
        "gpu_has": sorted(GPU_HAS),
        "python": PY_VERSION, "platforms": PLATFORMS,
    }
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = check_size(kit, max_mib)
    manifest["total_bytes"] = total
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _log(f"done in {time.monotonic() - t0:.0f} s")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="gather the GPU check's kit")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write KIT_DIR")
    p.add_argument("kit", type=Path)
    p.add_argument("--sdist", type=Path, help="a local llama-cpp-python sdist instead of pip download")
    p.add_argument("--max-mib", type=float, default=MAX_MIB)
    a = ap.parse_args(argv)
    try:
        m = prepare(a.kit, sdist=a.sdist, max_mib=a.max_mib)
    except KitError as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 1
    t = m["source"]["trim"]
    print(f"kit: {a.kit}  {m['total_bytes'] / 2**20:.1f} MiB (limit {a.max_mib:g} MiB)")
    print(f"  source: {m['source']['path']} {m['source']['bytes'] / 2**20:.1f} MiB "
          f"({t['kept_files']} files kept, {t['removed_files']} removed: "
          f"{t['removed_bytes'] / 2**20:.0f} MiB uncompressed)")
    print(f"  wheels: {m['llamactl_wheel']}, " + (", ".join(m["wheels"]) or "none other"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
