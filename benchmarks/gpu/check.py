"""The GPU check (run by benchmarks/gpu/run.sh on a bare, offline GPU machine, or with
--dry-run on any machine). See run.sh for the usage; this module does the work.

Phases (each printed with a UTC timestamp and the time since the start):
  preflight    tools, Python packages the kit does not carry, GPU, disk
  unpack       the kit's trimmed llama-cpp-python source into WORK/src
  install      the kit's wheels (llamactl and what the machine lacks) into WORK/site, offline
  build        llama-cpp-python with CUDA for compute capability 9.0 only, all cores, into
               WORK/site (in the background, while the models are written); dry run: the
               CMake configure of the trimmed source only, and the installed CPU build is used
  models       full-shape synthetic GGUFs (benchmarks/gpu/synth.py) on local disk: Llama 3.2
               1B and 3B at Q4_K_M, Llama 4 Scout at the largest quant that fits the disk;
               Llama 3.3 70B at Q4_K_M once Scout is deleted (dry run: toy widths)
  doctor       `llamactl doctor --json`
  per model    `llamactl plan --json`; llama.cpp's own buffers for that plan (loaded by
               tests/synthetic/llama_probe.py) and nvidia-smi; `llamactl bench` pp512/tg128 all
               on the GPU, tg's weight bytes per second against the GPU's bandwidth
  scout-24gib  Scout planned for a 24 GiB card (--vram 24GiB) and run that way: GPU memory
               really taken (< 24 GiB), experts overridden to CPU exactly as planned
  overhead     benchmarks/engine_overhead.py on the 1B model on the GPU
  report       OUT/results.json, OUT/results.md, OUT/cuda_measured.json

Exit status: 0 when every phase ran and every check held; 1 otherwise (results are written
in both cases)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import kit as kitmod  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
H200_BANDWIDTH = 4.8e12            # bytes/s, the H200's HBM3e
WALL_BUDGET = 540                  # seconds: nine minutes
DEADLINE = 570                     # the check stops itself here (GPUKIT_DEADLINE), report written
CUDA_ARCH = "90"
SCOUT_CARD = 24 * GIB
BUILD_RESERVE = 6 * GIB            # disk kept for the CUDA build tree and the installed package
DISK_MARGIN = 2 * GIB
MODELS = ["llama3.2-1b", "llama3.2-3b", "llama4-scout", "llama3.3-70b"]
# Python modules the kit does not carry: the GPU machine must have them (kit.GPU_HAS)
NEEDED_THERE = ["numpy", "jinja2", "typing_extensions", "typer", "rich", "yaml", "tqdm",
                "requests", "huggingface_hub", "filelock"]


class OutOfTime(Exception):
    """The check's deadline passed: the remaining phases are skipped, the report written."""


class Check:
    def __init__(self, kit: Path, out: Path, work: Path, dry_run: bool, models_dir: Path | None):
        self.kit, self.out, self.work, self.dry = kit, out, work, dry_run
        self.models_dir = models_dir or work / "models"
        self.t0 = time.monotonic()
        self.deadline = self.t0 + float(os.environ.get("GPUKIT_DEADLINE", DEADLINE))
        self.phases: list[dict[str, Any]] = []
        self.doc: dict[str, Any] = {"dry_run": dry_run,
                                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": {},
                                    "checks": [], "phases": self.phases}
        self.site = work / "site"
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(self.site), str(ROOT)])
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.setdefault("LLAMACTL_HOME", str(work / "home"))
        self.smi = shutil.which("nvidia-smi") if not dry_run else None
        self.failed = False

    # -- phases and logging --------------------------------------------------------------
    def log(self, msg: str) -> None:
        el = time.monotonic() - self.t0
        print(f"[gpucheck {_utc()} +{int(el) // 60:02d}:{int(el) % 60:02d}] {msg}",
              file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def phase(self, name: str, required: bool = False):
        rec: dict[str, Any] = {"phase": name, "start_s": round(time.monotonic() - self.t0, 1)}
        self.phases.append(rec)
        self.log(f">> {name}")
        try:
            yield rec
            rec["ok"] = True
        except OutOfTime:
            rec["ok"] = False
            rec["error"] = "out of time"
            self.failed = True
            raise
        except Exception as e:  # a phase failure is recorded; the others still run
            rec["ok"] = False
            rec["error"] = f"{type(e).__name__}: {e}"
            self.failed = True
            self.log(f"!! {name} failed: {rec['error']}")
            if required:
                raise
        finally:
            rec["seconds"] = max(0.0, round(time.monotonic() - self.t0 - rec["start_s"], 1))
            self.log(f"<< {name} ({rec['seconds']} s)")
            with contextlib.suppress(Exception):   # a killed run still leaves its results so far
                write_report(self.doc, self.out)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.doc["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        self.log(f"{'ok ' if ok else 'FAIL'} {name}: {detail}")
        if not ok:
            self.failed = True

    def run(self, args: list[str], *, timeout: float = 300, log_name: str | None = None,
            sample_gpu: bool = False) -> tuple[subprocess.CompletedProcess, float | None]:
        """Run a command with the kit's environment (cwd WORK, so that the installed llamactl,
        not the checkout's, is imported); stderr goes to OUT/logs/<log_name>. With
        sample_gpu, the peak rise of the GPU's used memory during the command (MiB)."""
        left = self.deadline - time.monotonic()
        if left <= 5:
            raise OutOfTime(f"deadline reached before {Path(args[0]).name} {' '.join(args[1:3])}")
        sampler = _GpuSampler(self.smi) if sample_gpu and self.smi else None
        if sampler:
            sampler.start()
        try:
            proc = subprocess.run(args, cwd=self.work, env=self.env, capture_output=True,
                                  text=True, timeout=min(timeout, left))
        except subprocess.TimeoutExpired:
            if timeout >= left:
                raise OutOfTime(f"deadline reached during {Path(args[0]).name} {' '.join(args[1:3])}")
            raise
        finally:
            peak = sampler.stop() if sampler else None
        if log_name:
            logs = self.out / "logs"
            logs.mkdir(exist_ok=True)
            (logs / f"{log_name}.log").write_text(f"$ {' '.join(args)}\n{proc.stderr}")
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-4:])
            raise RuntimeError(f"{Path(args[0]).name} {' '.join(args[1:4])} ... exit {proc.returncode}: {tail}")
        return proc, peak

    def llamactl(self, *args: str, **kw) -> Any:
        proc, _ = self.run([sys.executable, "-m", "llamactl", *args], **kw)
        return json.loads(proc.stdout)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- the phases -----------------------------------------------------------------------
    def preflight(self) -> None:
        with self.phase("preflight", required=True) as rec:
            manifest = json.loads((self.kit / "manifest.json").read_text())
            rec["kit_bytes"] = manifest.get("total_bytes")
            missing = [m for m in NEEDED_THERE if not _importable(m)]
            if not self.dry:
                self._cuda_paths(rec)
                missing += [m for m in ("scikit_build_core",) if not _importable(m)]
                for tool in ("nvcc", "cmake", "ninja", "nvidia-smi"):
                    if not shutil.which(tool):
                        missing.append(tool)
            if missing:
                raise RuntimeError("missing on this machine (the kit does not carry them): "
                                   + ", ".join(missing))
            self.work.mkdir(parents=True, exist_ok=True)
            self.models_dir.mkdir(parents=True, exist_ok=True)
            rec["python"] = sys.version.split()[0]
            rec["cpus"] = os.cpu_count()
            rec["disk_free_bytes"] = shutil.disk_usage(self.models_dir).free
            rec["models_dir"] = str(self.models_dir)
            if self.smi:
                (self.out / "logs").mkdir(exist_ok=True)
                full = subprocess.run([self.smi], capture_output=True, text=True, timeout=60)
                (self.out / "logs" / "nvidia-smi.log").write_text(full.stdout + full.stderr)
                q = subprocess.run([self.smi, "--query-gpu=name,memory.total,memory.used,compute_cap,driver_version",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
                rec["gpu"] = q.stdout.strip()
            if shutil.which("nvcc"):
                rec["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True,
                                             text=True).stdout.strip().splitlines()[-1:]
            stale = manifest.get("llamactl_source_sha256") not in (None, kitmod.source_digest(ROOT))
            if stale:
                self.log("   warning: the kit's llamactl differs from this checkout's: run prepare.sh again "
                         "to check the current code")
            self.doc["kit"] = {"llama_cpp_python": manifest["llama_cpp_python"], "stale": stale,
                               "bytes": manifest.get("total_bytes"), "wheels": manifest["wheels"],
                               "llamactl_wheel": manifest["llamactl_wheel"]}
            self._page_cache_tuning(rec)

    def _cuda_paths(self, rec: dict) -> None:
        """nvcc on PATH (CUDA's usual bin folder if it is not), and CUDA's library folders on
        LD_LIBRARY_PATH for everything this check starts (the built library links cudart and
        cuBLAS from there)."""
        if not shutil.which("nvcc"):
            for d in ("/usr/local/cuda/bin", *sorted(Path("/usr/local").glob("cuda-*/bin"), reverse=True)):
                if (Path(d) / "nvcc").exists():
                    os.environ["PATH"] = f"{d}{os.pathsep}{os.environ['PATH']}"
                    self.env["PATH"] = os.environ["PATH"]
                    break
        nvcc = shutil.which("nvcc")
        if not nvcc:
            return
        home = Path(nvcc).resolve().parent.parent
        libs = [str(p) for p in (home / "lib64", home / "targets" / "x86_64-linux" / "lib") if p.is_dir()]
        if libs:
            old = self.env.get("LD_LIBRARY_PATH")
            self.env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + ([old] if old else []))
        self.env.setdefault("CUDACXX", nvcc)
        rec["cuda_home"] = str(home)

    def _page_cache_tuning(self, rec: dict) -> None:
        """Let the page cache hold the synthetic models' dirty pages (real run, as root):
        the writes then go at memory speed while the disk catches up. Restored at exit."""
        if self.dry or os.environ.get("GPUKIT_DIRTY_RATIO", "40") == "0":
            return
        self._vm_saved = {}
        for knob, value in (("dirty_ratio", os.environ.get("GPUKIT_DIRTY_RATIO", "40")),
                            ("dirty_background_ratio", "20")):
            p = Path("/proc/sys/vm") / knob
            try:
                self._vm_saved[knob] = p.read_text().strip()
                p.write_text(value)
            except OSError as e:
                rec.setdefault("vm_tuning", []).append(f"{knob}: {e}")
        rec["vm_tuning_saved"] = dict(self._vm_saved)

    def restore_vm(self) -> None:
        for knob, value in getattr(self, "_vm_saved", {}).items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys/vm") / knob).write_text(value)

    def unpack(self) -> Path:
        with self.phase("unpack", required=True) as rec:
            m = json.loads((self.kit / "manifest.json").read_text())
            dest = self.work / "src"
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            with tarfile.open(self.kit / m["source"]["path"]) as t:
                t.extractall(dest, filter="data")
            src = dest / m["source"]["top"]
            rec["source"] = str(src)
            return src

    def install(self) -> None:
        with self.phase("install", required=True) as rec:
            wheels, foreign = [], []
            for w in sorted((self.kit / "wheels").glob("*.whl")):
                (wheels if wheel_fits_here(w.name) else foreign).append(str(w))
            if foreign:
                names = ", ".join(Path(w).name for w in foreign)
                if not self.dry:
                    raise RuntimeError(f"wheels not for this Python/platform: {names}")
                # the kit is for the GPU machine's CPython 3.12; here these packages come
                # from the environment the dry run runs in
                rec["skipped_foreign_wheels"] = [Path(w).name for w in foreign]
                self.log(f"   dry run: not installing {names} (built for the GPU machine's Python)")
            self.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                      "--no-compile", "--quiet", "--target", str(self.site), *wheels],
                     log_name="install", timeout=300)
            proc, _ = self.run([sys.executable, "-c", "import llamactl; print(llamactl.__file__)"])
            where = proc.stdout.strip()
            rec["llamactl"] = where
            if not where.startswith(str(self.site)):
                raise RuntimeError(f"llamactl is imported from {where}, not from the kit's install")
            rec["wheels"] = [Path(w).name for w in wheels]
            sys.path.insert(0, str(self.site))   # this process reads headers with it too

    def mtmd_wanted(self) -> bool:
        """Build llama.cpp's image path (mtmd) only when llamactl uses it (the images work)."""
        pkg = self.site / "llamactl"
        return any("mtmd" in p.read_text(errors="replace") for p in pkg.rglob("*.py"))

    def start_build(self, src: Path) -> subprocess.Popen | None:
        """Start the CUDA build in the background (real run); the dry run configures only."""
        mtmd = self.mtmd_wanted()
        cmake_args = (f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCH} -DGGML_NATIVE=OFF "
                      f"-DLLAVA_BUILD={'ON' if mtmd else 'OFF'} {os.environ.get('GPUKIT_CMAKE_EXTRA', '')}").strip()
        self.doc["build"] = {"cmake_args": cmake_args, "mtmd": mtmd, "jobs": os.cpu_count()}
        if self.dry:
            with self.phase("build (dry run: CMake configure of the trimmed source, CPU)") as rec:
                import llama_cpp

                rec["installed_llama_cpp_python"] = llama_cpp.__version__
                if llama_cpp.__version__ != kitmod.LLAMA_CPP_PYTHON:
                    raise RuntimeError(f"installed llama-cpp-python {llama_cpp.__version__}, "
                                       f"the kit pins {kitmod.LLAMA_CPP_PYTHON}")
                if not shutil.which("cmake"):
                    rec["configure"] = "skipped: no cmake on PATH"
                    return None
                gen = ["-G", "Ninja"] if shutil.which("ninja") else []
                self.run(["cmake", "-S", str(src), "-B", str(self.work / "build-configure"), *gen,
                          "-DGGML_NATIVE=OFF", f"-DLLAVA_BUILD={'ON' if mtmd else 'OFF'}",
                          f"-DSKBUILD_PLATLIB_DIR={self.work / 'configure-platlib'}"],
                         log_name="configure", timeout=300)
                rec["configure"] = "ok"
            return None
        self.log(f">> build (background): CMAKE_ARGS={cmake_args}")
        self._build_t0 = time.monotonic()
        env = dict(self.env, CMAKE_ARGS=cmake_args, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 16),
                   MAX_JOBS=str(os.cpu_count() or 16))
        env.pop("PYTHONPATH", None)
        log = open(self.out / "build.log", "w")
        return subprocess.Popen(
            [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
             "--no-compile", "--target", str(self.site), "-v", "-C", f"build-dir={self.work / 'build'}",
             str(src)], cwd=self.work, env=env, stdout=log, stderr=subprocess.STDOUT)

    def finish_build(self, proc: subprocess.Popen | None) -> None:
        if proc is None:
            return
        with self.phase("build (wait)", required=True) as rec:
            try:
                rc = proc.wait(timeout=max(1, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                raise OutOfTime("deadline reached during the CUDA build")
            rec["build_seconds"] = round(time.monotonic() - self._build_t0, 1)
            self.doc["build"]["seconds"] = rec["build_seconds"]
            if rc != 0:
                tail = (self.out / "build.log").read_text(errors="replace").strip().splitlines()[-6:]
                raise RuntimeError(f"the CUDA build failed (exit {rc}): " + " | ".join(tail))
            proc2, _ = self.run([sys.executable, "-c",
                                 "import llama_cpp; print(llama_cpp.__file__, llama_cpp.__version__, "
                                 "bool(llama_cpp.llama_supports_gpu_offload()))"])
            rec["llama_cpp"] = proc2.stdout.strip()
            if not proc2.stdout.strip().endswith("True"):
                raise RuntimeError(f"the built llama_cpp cannot offload: {proc2.stdout.strip()}")

    # -- models ---------------------------------------------------------------------------
    def model_path(self, key: str, quant: str) -> Path:
        return self.models_dir / f"{key}-{quant}{'-tiny' if self.dry else ''}.gguf"

    def write(self, key: str, quant: str) -> Path:
        import synth

        spec = synth.spec_for(key, tiny=self.dry)
        path = self.model_path(key, quant)
        need = synth.file_bytes(spec, quant) + 64 * MIB
        free = shutil.disk_usage(self.models_dir).free
        if need > free:
            raise RuntimeError(f"{path.name} needs {need / GIB:.1f} GiB, {free / GIB:.1f} GiB free")
        r = synth.write_model(path, spec, quant, threads=int(os.environ.get("GPUKIT_WRITE_THREADS", "8")))
        self.doc["models"].setdefault(key, {})["file"] = r
        self.log(f"   wrote {path.name}: {r['bytes'] / GIB:.2f} GiB in {r['seconds']:.1f} s "
                 f"({r['gb_per_s']} GB/s)")
        return path

    def scout_quant(self) -> str:
        """The largest quant whose Scout file fits the disk beside the build (and, from the
        throughput of the files written so far, in the time left)."""
        import synth

        free = shutil.disk_usage(self.models_dir).free
        reserve = (BUILD_RESERVE if not self.dry and self.models_dir.stat().st_dev == self.work.stat().st_dev
                   else 0) + DISK_MARGIN
        rates = [m["file"]["gb_per_s"] for m in self.doc["models"].values() if m.get("file", {}).get("gb_per_s")]
        rate = min(rates) * 1e9 if rates else None
        spec = synth.spec_for("llama4-scout", tiny=self.dry)
        choice = None
        for q in synth.QUANTS:
            size = synth.file_bytes(spec, q)
            fits = size + reserve <= free
            fast = rate is None or self.dry or size / rate <= 150
            self.log(f"   Scout {q}: {size / GIB:.1f} GiB; {free / GIB:.1f} GiB free "
                     f"(reserve {reserve / GIB:.0f}); fits {fits}; "
                     f"~{size / rate:.0f} s to write" if rate else f"   Scout {q}: {size / GIB:.1f} GiB, fits {fits}")
            if fits and fast:
                choice = q
                break
        self.doc["scout_quant_choice"] = {"free_bytes": free, "reserve_bytes": reserve,
                                          "write_rate_bytes_per_s": rate, "chosen": choice}
        if choice is None:
            raise RuntimeError(f"no Scout quant fits: {free / GIB:.1f} GiB free")
        return choice

    def write_models_bg(self, results: dict) -> threading.Thread:
        def work():
            try:
                results["llama3.2-1b"] = self.write("llama3.2-1b", "Q4_K_M")
                results["llama3.2-3b"] = self.write("llama3.2-3b", "Q4_K_M")
                q = self.scout_quant()
                results["llama4-scout"] = self.write("llama4-scout", q)
            except Exception as e:
                results["error"] = f"{type(e).__name__}: {e}"
        t = threading.Thread(target=work, name="models", daemon=True)
        t.start()
        return t

    # -- measurements ---------------------------------------------------------------------
    def doctor(self) -> None:
        with self.phase("doctor") as rec:
            d = self.llamactl("doctor", "--json", log_name="doctor")
            (self.out / "doctor.json").write_text(json.dumps(d, indent=2))
            self.doc["doctor"] = d
            rec["keys"] = sorted(d)[:20]

    def plan_and_probe(self, key: str, path: Path, *, vram: str | None = None, label: str = "plan") -> dict:
        args = ["plan", str(path), "--json"] + (["--vram", vram] if vram else [])
        plan = self.llamactl(*args, log_name=f"{key}-{label}")
        probe_args = [sys.executable, "-m", "tests.synthetic.llama_probe", str(path),
                      "--ctx", str(plan["n_ctx"]), "--ngl", str(plan["n_gpu_layers"]), "--tokens", "16",
                      "--log", str(self.out / "logs" / f"{key}-{label}-llama.log")]
        # load exactly as planned: flash attention, KV type, Llama 4's cache mode, micro-batch
        if plan.get("flash_attn"):
            probe_args.append("--flash-attn")
        probe_args += ["--kv-type", str(plan.get("kv_type") or "f16"), "--ubatch", str(plan.get("n_ubatch") or 512)]
        if plan.get("kv_cache") == "chunked":
            probe_args.append("--chunked")
        for p in plan["cpu_tensor_patterns"]:
            probe_args += ["--pattern", p]
        if self.smi:
            probe_args.append("--nvidia-smi")
        (self.out / "logs").mkdir(exist_ok=True)
        proc, peak = self.run(probe_args, log_name=f"{key}-{label}-probe", timeout=600, sample_gpu=True)
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        row = compare(plan, got, peak)
        row["label"] = label
        return row

    def exact_checks(self, key: str, row: dict) -> None:
        """What the plan claims to know exactly (weights, KV cache) against llama.cpp's
        buffers, on the device that holds them; the estimated total against nvidia-smi
        within 5% (the issue's threshold for correcting the planner)."""
        if row["n_gpu_layers"] and not self.dry:
            self.check(f"{key}: GPU weights as planned", abs(row["plan_gpu_weights_mib"] - row["llama_gpu_model_mib"]) < 1.0,
                       f"plan {row['plan_gpu_weights_mib']:.2f} MiB, llama.cpp {row['llama_gpu_model_mib']:.2f} MiB")
            self.check(f"{key}: GPU KV cache as planned", abs(row["plan_gpu_kv_mib"] - row["llama_gpu_kv_mib"]) < 0.02,
                       f"plan {row['plan_gpu_kv_mib']:.2f} MiB, llama.cpp {row['llama_gpu_kv_mib']:.2f} MiB")
            err = row.get("gpu_total_error")
            self.check(f"{key}: GPU total within 5% of nvidia-smi", err is not None and abs(err) <= 0.05,
                       f"plan {row['plan_gpu_total_mib']:.0f} MiB, measured {row['measured_gpu_total_mib']} MiB")
        elif not row["n_gpu_layers"]:
            self.check(f"{key}: CPU weights as planned", abs(row["plan_cpu_weights_mib"] - row["llama_cpu_model_mib"]) < 0.05,
                       f"plan {row['plan_cpu_weights_mib']:.2f} MiB, llama.cpp {row['llama_cpu_model_mib']:.2f} MiB")
            self.check(f"{key}: CPU KV cache as planned", abs(row["plan_cpu_kv_mib"] - row["llama_cpu_kv_mib"]) < 0.02,
                       f"plan {row['plan_cpu_kv_mib']:.2f} MiB, llama.cpp {row['llama_cpu_kv_mib']:.2f} MiB")

    def bench(self, key: str, path: Path) -> dict:
        reps = "1" if self.dry else "3"
        d = self.llamactl("bench", str(path), "-p", "512", "-n", "128", "-ngl", "999", "-r", reps,
                          "--json", "-q", log_name=f"{key}-bench", timeout=600)
        out = {}
        for r in d["results"]:
            if r.get("error"):
                raise RuntimeError(f"bench {r['test']}: {r['error']}")
            out[r["test"]] = {"tps": r["tps_mean"], "sd": r["tps_sd"], "backend": r["backend"],
                              "gpu_layers": r["gpu_layers"], "gpu_memory_bytes": r.get("gpu_memory_bytes"),
                              "load_seconds": r.get("load_seconds"), "n_ctx": r.get("n_ctx")}
        tg = out.get("tg128")
        if tg:
            per_token = weight_bytes_per_token(path)
            tg["weight_bytes_per_token"] = per_token
            tg["weight_bytes_per_s"] = tg["tps"] * per_token
            tg["fraction_of_4_8_tb_s"] = tg["weight_bytes_per_s"] / H200_BANDWIDTH
        return out

    def measure(self, key: str, path: Path) -> None:
        m = self.doc["models"].setdefault(key, {})
        with self.phase(f"{key}: plan vs llama.cpp"):
            row = self.plan_and_probe(key, path)
            m["plan_vs_measured"] = [row]
            self.exact_checks(key, row)
        with self.phase(f"{key}: bench pp512/tg128"):
            m["bench"] = self.bench(key, path)

    def scout_card(self, path: Path) -> None:
        m = self.doc["models"].setdefault("llama4-scout", {})
        with self.phase("llama4-scout: planned and run for a 24 GiB card"):
            vram = "24GiB"
            if self.dry:
                vram = str(tiny_card_vram(self, path))
            row = self.plan_and_probe("llama4-scout", path, vram=vram, label="card-24gib")
            m.setdefault("plan_vs_measured", []).append(row)
            m["card_24gib"] = row
            self.check("scout planned for 24 GiB moves experts to RAM",
                       row["plan_expert_layers_on_cpu"] > 0,
                       f"{row['plan_expert_layers_on_cpu']} layers' experts in RAM (vram {vram})")
            self.check("scout 24 GiB: exactly the planned expert tensors overridden to CPU",
                       row["override_names_ok"],
                       f"{row['overridden']} overridden, {row['expected_overridden']} planned")
            if self.smi:
                used = row["measured_gpu_total_mib"]
                self.check("scout 24 GiB: GPU memory taken < 24 GiB", used is not None and used * MIB < SCOUT_CARD,
                           f"{used} MiB taken (nvidia-smi), plan {row['plan_gpu_total_mib']:.0f} MiB")

    def overhead(self, path: Path) -> None:
        with self.phase("engine overhead (1B, all layers offloaded)") as rec:
            args = [sys.executable, str(ROOT / "benchmarks" / "engine_overhead.py"), "--model", str(path),
                    "--gpu-layers", "999", "-r", "1" if self.dry else "5", "--probe-reps", "0",
                    "--clock", "wall", "-t", "1" if self.dry else str(min(4, os.cpu_count() or 1)), "--json"]
            proc, _ = self.run(args, log_name="engine-overhead", timeout=600)
            d = json.loads(proc.stdout)
            self.doc["engine_overhead"] = {k: {"ratio": d[k]["ratio"], "goal": d[k]["goal"],
                                               "llamactl_tps": d[k]["wall"]["llamactl_tps"],
                                               "baseline_tps": d[k]["wall"]["baseline_tps"]}
                                           for k in ("pp", "tg")}
            rec.update(self.doc["engine_overhead"])

    # -- the whole run --------------------------------------------------------------------
    def main(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self.preflight()
            src = self.unpack()
            self.install()
            build = self.start_build(src)
            written: dict[str, Any] = {}
            writer_thread = self.write_models_bg(written)
            self.finish_build(build)
            self.doctor()
            writer_thread.join()
            if "error" in written:
                with self.phase("models"):
                    raise RuntimeError(written["error"])
            for key in ("llama3.2-1b", "llama3.2-3b"):
                if key in written:
                    self.measure(key, written[key])
            if "llama3.2-1b" in written:
                self.overhead(written["llama3.2-1b"])
            scout = written.get("llama4-scout")
            if scout:
                self.measure("llama4-scout", scout)
                self.scout_card(scout)
                with self.phase("delete Scout"):
                    scout.unlink()
            with self.phase("write Llama 3.3 70B Q4_K_M"):
                p70 = self.write("llama3.3-70b", "Q4_K_M")
            if p70.exists():
                self.measure("llama3.3-70b", p70)
        except Exception as e:  # a required phase failed, or time ran out: report what there is
            self.doc["aborted"] = f"{type(e).__name__}: {e}"
            self.failed = True
        finally:
            self.restore_vm()
            if os.environ.get("GPUKIT_KEEP_MODELS") != "1":
                for p in self.models_dir.glob("*.gguf*"):
                    p.unlink()
            pack_logs(self.out)
            self.doc["wall_seconds"] = round(self.elapsed(), 1)
            self.doc["within_budget"] = self.doc["wall_seconds"] <= WALL_BUDGET
            self.doc["ok"] = not self.failed
            write_report(self.doc, self.out)
            self.log(f"results: {self.out / 'results.json'}, {self.out / 'results.md'} "
                     f"({'ok' if not self.failed else 'FAILED'}, {self.doc['wall_seconds']} s)")
        return 0 if not self.failed else 1


# -- helpers ------------------------------------------------------------------------------
def wheel_fits_here(filename: str) -> bool:
    """Whether this interpreter can install the wheel (its tags against this Python's)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # pragma: no cover - pip always has it
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
    here = set(sys_tags())
    return any(t in here for t in parse_wheel_filename(filename)[3])


def _utc() -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime())


def _importable(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


class _GpuSampler:
    """Polls nvidia-smi's used memory of GPU 0 while a command runs; the peak rise, MiB."""

    def __init__(self, smi: str):
        self.smi, self.peak, self.base = smi, None, None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _read(self) -> float | None:
        try:
            out = subprocess.run([self.smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            return float(out.splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            v = self._read()
            if v is not None:
                self.peak = v if self.peak is None else max(self.peak, v)
            self._stop.wait(0.25)

    def start(self) -> None:
        self.base = self._read()
        self._t.start()

    def stop(self) -> float | None:
        self._stop.set()
        self._t.join(timeout=15)
        if self.peak is None or self.base is None:
            return None
        return self.peak - self.base


def compare(plan: dict, got: dict, smi_peak_rise: float | None) -> dict:
    """The plan next to what llama.cpp allocated (its buffer log) and what nvidia-smi saw."""
    from llamactl.gguf_info import read_gguf

    bufs = got["buffers"]

    def on_gpu(dev: str) -> bool:               # CUDA0, CUDA1 ...; CUDA_Host is pinned RAM
        return dev.startswith("CUDA") and not dev.startswith("CUDA_Host")

    def dev_sum(kind: str, gpu: bool) -> float:
        # CPU_REPACK is llama.cpp's re-laid-out copy of some CPU weights (its CPU kernels'
        # layout), beside the mapped file: reported on its own, not as the weights
        return sum(v for k, v in bufs.get(kind, {}).items()
                   if on_gpu(k) == gpu and k not in ("CUDA_Host", "CPU_REPACK"))

    g = plan["gpu"]
    c = plan["cpu"]
    measured_gpu = got.get("nvidia_smi_used_mib")
    llama_gpu = dev_sum("model", True) + dev_sum("KV", True) + dev_sum("compute", True)
    row = {
        "n_ctx": plan["n_ctx"], "n_gpu_layers": plan["n_gpu_layers"], "strategy": plan["strategy"],
        "plan_expert_layers_on_cpu": len(plan["expert_layers_on_cpu"]),
        "plan_gpu_weights_mib": (g["weights"] + g["output_copy"]) / MIB, "llama_gpu_model_mib": dev_sum("model", True),
        "plan_gpu_kv_mib": g["kv_cache"] / MIB, "llama_gpu_kv_mib": dev_sum("KV", True),
        "plan_gpu_compute_mib": g["compute"] / MIB, "llama_gpu_compute_mib": dev_sum("compute", True),
        "plan_gpu_overhead_mib": g["overhead"] / MIB,
        "plan_gpu_total_mib": g["total"] / MIB,
        "llama_gpu_buffers_mib": llama_gpu,
        "measured_gpu_total_mib": measured_gpu if measured_gpu is not None else smi_peak_rise,
        "measured_source": "nvidia-smi (process)" if measured_gpu is not None else
                           ("nvidia-smi (device peak rise)" if smi_peak_rise is not None else None),
        "plan_cpu_weights_mib": c["weights"] / MIB, "llama_cpu_model_mib": dev_sum("model", False),
        "llama_cpu_repack_mib": bufs.get("model", {}).get("CPU_REPACK", 0.0),
        "plan_cpu_kv_mib": c["kv_cache"] / MIB, "llama_cpu_kv_mib": sum(v for k, v in bufs.get("KV", {}).items() if k == "CPU"),
        "plan_cpu_compute_mib": c["compute"] / MIB, "llama_cpu_compute_mib": dev_sum("compute", False),
        "llama_host_compute_mib": bufs.get("compute", {}).get("CUDA_Host", 0.0),
        "generated_tokens": got.get("completion_tokens"),
    }
    measured = row["measured_gpu_total_mib"]
    row["measured_overhead_mib"] = (measured - llama_gpu) if measured is not None and plan["n_gpu_layers"] else None
    # the tensors the plan keeps in RAM, against llama.cpp's "overridden to CPU" lines
    pats = plan["cpu_tensor_patterns"]
    expected = {t.name for t in read_gguf(plan["model"]).tensors if any(re.search(p, t.name) for p in pats)}
    row["overridden"] = len(got["overridden"])
    row["expected_overridden"] = len(expected)
    row["override_names_ok"] = set(got["overridden"]) == expected
    for part in ("weights", "kv", "compute"):
        p, m = row[f"plan_gpu_{part}_mib"], row[f"llama_gpu_{'model' if part == 'weights' else part}_mib"]
        row[f"gpu_{part}_error"] = (p - m) / m if m else None
    if measured:
        row["gpu_total_error"] = (row["plan_gpu_total_mib"] - measured) / measured
    return row


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of weights one generated token reads on the GPU: every tensor but token_embd
    (one row of it), and of each MoE layer's routed experts only the used share."""
    from llamactl.gguf_info import read_gguf
    from llamactl.offload import model_shape

    s = model_shape(read_gguf(path))
    experts = sum(s.expert_bytes)
    share = (s.n_expert_used / s.n_expert) if s.n_expert else 0.0
    return int(s.tensor_bytes - s.input_bytes - experts + experts * share + s.output_copy_bytes)


def tiny_card_vram(chk: Check, path: Path) -> int:
    """The dry run's stand-in for a 24 GiB card: a GPU budget that holds the tiny Scout
    without half its experts, so that the plan moves experts to RAM as on the real card."""
    full = chk.llamactl("plan", str(path), "--json", "--vram", "64GiB", log_name="scout-tiny-full")
    from llamactl.gguf_info import read_gguf
    from llamactl.offload import model_shape

    s = model_shape(read_gguf(path))
    return int(full["gpu"]["total"] - sum(s.expert_bytes) // 2 + (256 << 20))


def pack_logs(out: Path) -> None:
    """OUT/logs/ and OUT/build.log into OUT/logs.tar.gz: a handful of files to bring back."""
    logs, build = out / "logs", out / "build.log"
    if not logs.exists() and not build.exists():
        return
    with tarfile.open(out / "logs.tar.gz", "w:gz") as t:
        for p in ([build] if build.exists() else []) + (sorted(logs.iterdir()) if logs.exists() else []):
            t.add(p, arcname=p.name if p == build else f"logs/{p.name}")
    shutil.rmtree(logs, ignore_errors=True)
    build.unlink(missing_ok=True)


def write_report(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc["cuda_measured"] = derive_constants(doc)
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (out / "cuda_measured.json").write_text(json.dumps(doc["cuda_measured"], indent=2) + "\n")
    (out / "results.md").write_text(markdown(doc))


def derive_constants(doc: dict) -> dict:
    """The planner's CUDA estimates as this run measured them: the per-process overhead
    (GPU memory beyond llama.cpp's own buffers, the largest seen) and the ratio of the real
    GPU compute buffer to the estimate (the largest seen). Null where nothing ran on a GPU."""
    try:   # the factor the plans above already carry (a previous run's, applied)
        from llamactl.offload import cuda_constants

        factor_in_use = cuda_constants()[1]
    except Exception:
        factor_in_use = 1.0
    overheads, ratios = [], []
    for m in doc["models"].values():
        for r in m.get("plan_vs_measured", []):
            if r.get("measured_overhead_mib") is not None:
                overheads.append(r["measured_overhead_mib"])
            if r.get("llama_gpu_compute_mib") and r.get("plan_gpu_compute_mib"):
                ratios.append(r["llama_gpu_compute_mib"] / (r["plan_gpu_compute_mib"] / factor_in_use))
    return {
        "source": "benchmarks/gpu/run.sh" + (" --dry-run (no GPU: nothing measured)" if doc["dry_run"] else ""),
        "date": doc["started"],
        "gpu": (doc["phases"][0].get("gpu") if doc["phases"] else None),
        "cuda_overhead_bytes": int(max(overheads) * MIB) if overheads and not doc["dry_run"] else None,
        "compute_buffer_factor": round(max(ratios), 4) if ratios and not doc["dry_run"] else None,
        "samples": {"overhead_mib": overheads, "compute_ratio": [round(x, 4) for x in ratios]},
    }


def _f(v: Any, nd: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def markdown(doc: dict) -> str:
    lines = [f"# GPU check {'(DRY RUN: no GPU, toy shapes)' if doc['dry_run'] else ''}".rstrip(), "",
             f"started {doc['started']}, wall {doc.get('wall_seconds')} s "
             f"(budget {WALL_BUDGET} s), {'all checks held' if doc.get('ok') else 'FAILED'}", ""]
    if doc.get("kit", {}).get("stale"):
        lines += ["**the kit's llamactl is not this checkout's** (prepare.sh ran on other code)", ""]
    if doc.get("aborted"):
        lines += [f"aborted: {doc['aborted']}", ""]
    lines += ["| model | run | ctx | ngl | GPU weights plan / llama | GPU KV plan / llama | GPU compute plan / llama "
              "| GPU total plan / measured | overhead measured | CPU weights plan / llama | CPU KV plan / llama "
              "| pp512 t/s | tg128 t/s | tg weight GB/s (of 4.8 TB/s) |", "|" + "---|" * 14]
    for key, m in doc["models"].items():
        bench = m.get("bench", {})
        for i, r in enumerate(m.get("plan_vs_measured", [])):
            pp = bench.get("pp512", {}) if i == 0 else {}
            tg = bench.get("tg128", {}) if i == 0 else {}
            bw = (f"{tg['weight_bytes_per_s'] / 1e9:,.0f} ({tg['fraction_of_4_8_tb_s']:.0%})"
                  if tg.get("weight_bytes_per_s") else "-")
            lines.append(
                f"| {key} {m.get('file', {}).get('quant', '')} | {r['label']} | {r['n_ctx']} | {r['n_gpu_layers']} "
                f"| {_f(r['plan_gpu_weights_mib'])} / {_f(r['llama_gpu_model_mib'])} "
                f"| {_f(r['plan_gpu_kv_mib'])} / {_f(r['llama_gpu_kv_mib'])} "
                f"| {_f(r['plan_gpu_compute_mib'])} / {_f(r['llama_gpu_compute_mib'])} "
                f"| {_f(r['plan_gpu_total_mib'])} / {_f(r['measured_gpu_total_mib'])} "
                f"| {_f(r['measured_overhead_mib'])} "
                f"| {_f(r['plan_cpu_weights_mib'], 1)} / {_f(r['llama_cpu_model_mib'], 1)} "
                f"| {_f(r['plan_cpu_kv_mib'], 1)} / {_f(r['llama_cpu_kv_mib'], 1)} "
                f"| {_f(pp.get('tps'), 1)} | {_f(tg.get('tps'), 1)} | {bw} |")
    lines += ["", "MiB unless stated. 'measured' is nvidia-smi's memory of the probe process.", ""]
    eo = doc.get("engine_overhead")
    if eo:
        lines += [f"engine overhead (1B, llamactl / raw llama_decode loop, wall): pp512 {eo['pp']['ratio']:.3f}, "
                  f"tg128 {eo['tg']['ratio']:.3f}", ""]
    for c in doc["checks"]:
        lines.append(f"- {'ok' if c['ok'] else 'FAIL'}: {c['check']} ({c['detail']})")
    lines += ["", "| phase | start s | seconds | ok |", "|---|---:|---:|---|"]
    for p in doc["phases"]:
        lines.append(f"| {p['phase']} | {p['start_s']} | {p.get('seconds')} | "
                     f"{'yes' if p.get('ok') else 'NO: ' + str(p.get('error', ''))[:120]} |")
    cm = doc.get("cuda_measured", {})
    lines += ["", f"measured CUDA constants: overhead {cm.get('cuda_overhead_bytes')} bytes, "
                  f"compute-buffer factor {cm.get('compute_buffer_factor')}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the GPU check (see benchmarks/gpu/run.sh)")
    ap.add_argument("kit", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry-run", action="store_true",
                    help="everything but the CUDA build and GPU execution: toy shapes, the installed build")
    a = ap.parse_args(argv)
    if not (a.kit / "manifest.json").exists():
        print(f"gpucheck: error: {a.kit} is not a kit (no manifest.json); run benchmarks/gpu/prepare.sh first",
              file=sys.stderr)
        return 2
    work = Path(os.environ.get("GPUKIT_WORK") or (Path(os.environ.get("TMPDIR", "/tmp")) / "llamactl-gpucheck"))
    models = os.environ.get("GPUKIT_MODELS")
    chk = Check(a.kit.resolve(), a.out.resolve(), work.resolve(), a.dry_run, Path(models) if models else None)
    return chk.main()


if __name__ == "__main__":
    sys.exit(main())
