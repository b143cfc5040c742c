"""What memory this machine has: NVIDIA GPUs (NVML through ctypes, else `nvidia-smi`), the
devices ggml (llama.cpp) sees (the one enumeration of them), and system RAM (the one
/proc/meminfo reader). Returns data; never prints. `llamactl.machine` describes the rest of
the machine (CPU, builds, versions) for `doctor` and `bench`.

Nothing here needs a GPU or a CUDA toolkit: each probe fails quietly to "none found".
LLAMACTL_FAKE_GPUS (tests) replaces the NVIDIA probe: "NAME:TOTAL_MIB:FREE_MIB[,...]"."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 1024 * 1024


@dataclass
class GpuInfo:
    index: int
    name: str
    total: int  # bytes
    free: int  # bytes
    source: str  # "nvml", "nvidia-smi", "ggml", "env"
    driver: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GgmlDevice:
    name: str
    description: str
    kind: str  # "cpu", "gpu", "igpu", "accel"
    total: int
    free: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SystemMemory:
    total: int
    available: int


@dataclass
class Devices:
    gpus: list[GpuInfo] = field(default_factory=list)
    ram: SystemMemory | None = None
    gpu_source: str = "none"

    @property
    def vram_free(self) -> int:
        return sum(g.free for g in self.gpus)

    @property
    def vram_total(self) -> int:
        return sum(g.total for g in self.gpus)


# --- NVIDIA: NVML ---------------------------------------------------------------------

class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _nvml_gpus() -> list[GpuInfo] | None:
    """None when NVML is not there or fails; else the GPUs (possibly none)."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    try:
        init = getattr(lib, "nvmlInit_v2", None) or lib.nvmlInit
        if init() != 0:
            return None
        try:
            count = ctypes.c_uint(0)
            get_count = getattr(lib, "nvmlDeviceGetCount_v2", None) or lib.nvmlDeviceGetCount
            if get_count(ctypes.byref(count)) != 0:
                return None
            driver = ctypes.create_string_buffer(96)
            ok = lib.nvmlSystemGetDriverVersion(driver, ctypes.c_uint(96)) == 0
            drv = driver.value.decode(errors="replace") if ok else None
            get_handle = getattr(lib, "nvmlDeviceGetHandleByIndex_v2", None) or lib.nvmlDeviceGetHandleByIndex
            gpus = []
            for i in range(count.value):
                handle = ctypes.c_void_p()
                if get_handle(ctypes.c_uint(i), ctypes.byref(handle)) != 0:
                    continue
                name = ctypes.create_string_buffer(96)
                lib.nvmlDeviceGetName(handle, name, ctypes.c_uint(96))
                mem = _NvmlMemory()
                if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) != 0:
                    continue
                gpus.append(GpuInfo(i, name.value.decode(errors="replace"), int(mem.total), int(mem.free),
                                    "nvml", drv))
            return gpus
        finally:
            lib.nvmlShutdown()
    except (AttributeError, OSError):
        return None


# --- NVIDIA: nvidia-smi ---------------------------------------------------------------

def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Parse `nvidia-smi --query-gpu=index,name,memory.total,memory.free,driver_version
    --format=csv,noheader,nounits` (MiB)."""
    gpus = []
    for line in text.strip().splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 4:
            continue
        try:
            gpus.append(GpuInfo(int(cols[0]), cols[1], int(float(cols[2])) * MIB, int(float(cols[3])) * MIB,
                                "nvidia-smi", cols[4] if len(cols) > 4 else None))
        except ValueError:
            continue
    return gpus


def _smi_gpus() -> list[GpuInfo] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,memory.free,driver_version",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=15,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return parse_nvidia_smi(proc.stdout)


def _fake_gpus(spec: str) -> list[GpuInfo]:
    gpus = []
    for i, item in enumerate(x for x in spec.split(",") if x.strip()):
        name, total, free = item.rsplit(":", 2)
        gpus.append(GpuInfo(i, name, int(total) * MIB, int(free) * MIB, "env"))
    return gpus


def nvidia_gpus() -> tuple[list[GpuInfo], str]:
    """(GPUs, source) as the NVIDIA driver sees them; ([], "none") without a driver."""
    fake = os.environ.get("LLAMACTL_FAKE_GPUS")
    if fake is not None:
        return _fake_gpus(fake), "env"
    gpus = _nvml_gpus()
    if gpus is not None:
        return gpus, "nvml"
    gpus = _smi_gpus()
    if gpus is not None:
        return gpus, "nvidia-smi"
    return [], "none"


# --- ggml's device list -----------------------------------------------------------------

_GGML_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


_GGML_TYPED: dict[str, Any] = {}


def ggml_lib() -> Any:
    """ggml's library handle from the bindings (`llama_cpp._ggml.libggml`; imports llama_cpp,
    which loads and registers the backends), with the argument and result types of the
    device functions set once."""
    if "lib" in _GGML_TYPED:
        return _GGML_TYPED["lib"]
    import llama_cpp  # noqa: F401
    from llama_cpp._ggml import libggml as g

    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    g.ggml_backend_dev_count.restype = sz
    g.ggml_backend_dev_count.argtypes = []
    g.ggml_backend_dev_get.restype = vp
    g.ggml_backend_dev_get.argtypes = [sz]
    for fn in (g.ggml_backend_dev_name, g.ggml_backend_dev_description):
        fn.restype = ctypes.c_char_p
        fn.argtypes = [vp]
    g.ggml_backend_dev_type.restype = ctypes.c_int
    g.ggml_backend_dev_type.argtypes = [vp]
    g.ggml_backend_dev_memory.restype = None
    g.ggml_backend_dev_memory.argtypes = [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]
    for name in ("ggml_version", "ggml_commit"):
        fn = getattr(g, name, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            fn.argtypes = []
    _GGML_TYPED["lib"] = g
    return g


def ggml_devices() -> list[GgmlDevice]:
    """The backend devices of the installed llama.cpp build (imports llama_cpp), with the
    free and total memory ggml reports for each."""
    g = ggml_lib()
    sz = ctypes.c_size_t
    out = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        if not dev:
            continue
        free, total = sz(0), sz(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(GgmlDevice(
            name=(g.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
            description=(g.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
            kind=_GGML_KINDS.get(g.ggml_backend_dev_type(dev), "other"),
            total=int(total.value), free=int(free.value),
        ))
    return out


def supports_gpu_offload() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


# --- system RAM -------------------------------------------------------------------------

def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """Linux's /proc/meminfo in bytes ({"MemTotal": ..., "MemAvailable": ...}); {} elsewhere."""
    out: dict[str, int] = {}
    try:
        with open(path) as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
                    out[key.strip()] = int(parts[0]) * scale
    except OSError:
        pass
    return out


def system_memory() -> SystemMemory:
    """Total and available RAM: /proc/meminfo, else sysconf (LLAMACTL_FAKE_RAM_MIB in tests)."""
    fake = os.environ.get("LLAMACTL_FAKE_RAM_MIB")
    if fake:
        return SystemMemory(int(fake) * MIB, int(fake) * MIB)
    info = meminfo()
    total, avail = info.get("MemTotal"), info.get("MemAvailable")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = avail = 0
    return SystemMemory(int(total), int(avail if avail is not None else total))


def detect(use_ggml: bool = True) -> Devices:
    """NVIDIA GPUs from the driver; without any, GPU-type devices from ggml (a CUDA, Metal
    or Vulkan build reports its own); and system RAM."""
    gpus, source = nvidia_gpus()
    if not gpus and use_ggml and source != "env":
        try:
            devs = [d for d in ggml_devices() if d.kind in ("gpu", "igpu")]
        except Exception:  # a broken llama_cpp install must not break detection
            devs = []
        gpus = [GpuInfo(i, f"{d.name} ({d.description})", d.total, d.free, "ggml") for i, d in enumerate(devs)]
        source = "ggml" if gpus else "none"
    return Devices(gpus=gpus, ram=system_memory(), gpu_source=source)
