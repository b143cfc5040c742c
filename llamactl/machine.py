"""What this machine is and what llama.cpp build runs on it: CPU (model, cores, flags), RAM,
llama-cpp-python's version, llama.cpp's system info and ggml build, the devices ggml sees.
One reading of it (`llama_build`, `cpu_*`), two views: `machine_info()`, the record saved
with every `bench` result, and `machine_report()`, what `doctor` shows with its advice.
Returns data; never prints. Memory and GPUs come from `llamactl.devices`."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamactl import devices

CUDA_REINSTALL = ('CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
                  '"llama-cpp-python>=0.3.36,<0.4"')
PORTABLE_REINSTALL = ('CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir '
                      '"llama-cpp-python>=0.3.36,<0.4"')
PLAIN_REINSTALL = 'pip install --force-reinstall "llama-cpp-python>=0.3.36,<0.4"'


# --- CPU ---------------------------------------------------------------------------------

def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            return fh.read().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    for line in _cpuinfo():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_cores_physical() -> int | None:
    pairs = set()
    phys = core = None
    for line in _cpuinfo() + [""]:
        if line.startswith("physical id"):
            phys = line.split(":", 1)[1].strip()
        elif line.startswith("core id"):
            core = line.split(":", 1)[1].strip()
        elif not line.strip():
            if core is not None:
                pairs.add((phys, core))
            phys = core = None
    return len(pairs) or None


def cpu_flags() -> set[str]:
    fake = os.environ.get("LLAMACTL_FAKE_CPU_FLAGS")
    if fake is not None:
        return set(fake.split())
    for line in _cpuinfo():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def amx_warning(flags: set[str], system_info: str) -> str | None:
    """The FIELD-NOTES problem: a CPU that advertises AMX, and a build that uses AMX
    kernels, can die with SIGILL on quantized models on some virtual machines."""
    if not any(f.startswith("amx") for f in flags):
        return None
    if "AMX" not in system_info.upper():
        return None
    return ("this CPU advertises AMX and this llama.cpp build uses AMX kernels: on some virtual "
            "machines quantized models (Q8_0, Q4_K_M) then crash with SIGILL (exit 132); if they "
            "do, reinstall a portable build")


# --- the llama.cpp build -------------------------------------------------------------------

@dataclass
class LlamaBuild:
    llama_cpp_python: str | None = None
    system_info: str = ""
    gpu_offload: bool = False
    ggml_version: str | None = None
    ggml_commit: str | None = None
    devices: list[devices.GgmlDevice] = field(default_factory=list)
    error: str | None = None          # why llama_cpp could not be read (a broken install)


def llama_build() -> LlamaBuild:
    """llama-cpp-python's version, llama.cpp's system info and ggml build, and ggml's
    devices; a broken install gives `error` instead of raising."""
    from importlib import metadata

    build = LlamaBuild()
    try:
        build.llama_cpp_python = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        pass
    try:
        import llama_cpp

        build.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        raw = llama_cpp.llama_print_system_info()
        build.system_info = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).strip()
        build.devices = devices.ggml_devices()
        lib = devices.ggml_lib()
        for name in ("ggml_version", "ggml_commit"):
            fn = getattr(lib, name, None)
            value = (fn() or b"").decode(errors="replace") if fn is not None else ""
            setattr(build, name, value or None)
    except Exception as exc:  # report a broken install instead of dying
        build.error = str(exc) or type(exc).__name__
    return build


# --- the two views -------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """What a benchmark result must be read with: CPU, cores, RAM, GPUs, llama.cpp's build
    and system info, llamactl's version (the keys saved in bench's history)."""
    from llamactl import __version__

    build = llama_build()
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": cpu_cores_physical(),
        "ram_bytes": devices.system_memory().total or None,
        "llamactl_version": __version__,
        "llama_cpp_python_version": build.llama_cpp_python,
        "llama_cpp_system_info": build.system_info if build.error is None else f"unavailable: {build.error}",
        "gpu_offload_supported": build.gpu_offload,
        "ggml_version": build.ggml_version,
        "ggml_commit": build.ggml_commit,
    }
    info["llama_cpp_build"] = (f"ggml {build.ggml_version} ({build.ggml_commit}), vendored by "
                               f"llama-cpp-python {build.llama_cpp_python}")
    info["gpus"] = [{"name": d.name, "description": d.description, "memory_total_bytes": d.total}
                    for d in build.devices if d.kind in ("gpu", "igpu")]
    return info


def machine_report() -> dict[str, Any]:
    """Everything `doctor` shows, as data, with `problems` (level, message, command)."""
    import sys

    from llamactl import __version__, paths
    from llamactl.fsutil import free_bytes

    build = llama_build()
    report: dict[str, Any] = {
        "versions": {"python": platform.python_version(), "llamactl": __version__,
                     "llama_cpp_python": build.llama_cpp_python},
        "problems": [],
        "cpu": {"model": cpu_model(), "cores_logical": os.cpu_count(),
                "cores_physical": cpu_cores_physical()},
    }
    if build.error is not None:
        report["problems"].append({"level": "error", "message": f"llama_cpp does not load: {build.error}",
                                   "command": PLAIN_REINSTALL})
    report["llama_cpp"] = {"system_info": build.system_info, "gpu_offload": build.gpu_offload,
                           "ggml_version": build.ggml_version, "ggml_commit": build.ggml_commit,
                           "devices": [d.to_dict() for d in build.devices]}
    gpus, source = devices.nvidia_gpus()
    ggml_gpus = [d for d in build.devices if d.kind in ("gpu", "igpu")]
    report["nvidia"] = {"source": source, "driver": next((g.driver for g in gpus if g.driver), None),
                        "gpus": [dict(g.to_dict(), usable=bool(build.gpu_offload and ggml_gpus))
                                 for g in gpus]}
    ram = devices.system_memory()
    report["ram"] = {"total": ram.total, "available": ram.available}
    all_paths = paths.all_paths()
    report["paths"] = all_paths
    disk = {}
    for key in ("models", "hf_hub_cache"):
        try:
            disk[key] = {"path": all_paths[key], "free": free_bytes(Path(all_paths[key]))}
        except OSError:
            disk[key] = {"path": all_paths[key], "free": None}
    report["disk"] = disk
    report["python_executable"] = sys.executable
    if gpus and not build.gpu_offload:
        report["problems"].append({
            "level": "warning",
            "message": f"{len(gpus)} NVIDIA GPU(s) found, but this llama-cpp-python build is CPU-only",
            "command": CUDA_REINSTALL,
        })
    amx = amx_warning(cpu_flags(), build.system_info)
    if amx:
        report["problems"].append({"level": "warning", "message": amx, "command": PORTABLE_REINSTALL})
    return report
