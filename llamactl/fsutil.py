"""Files that are never half-written: atomic writes, locks, free-space checks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from llamactl.errors import InsufficientResources, LlamactlError


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux /proc), else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _writer_tag() -> str:
    """Who writes a temporary file: this process's id and start time (a recycled pid is
    then not taken for the writer)."""
    pid = os.getpid()
    return f"p{pid}-{_start_time(pid) or 0}"


_PARTIAL_RE = re.compile(r"^\..+\.p(\d+)-(\d+)\.[A-Za-z0-9_]+\.partial$")


def _alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # someone else's live process
    now = _start_time(pid)
    return not (start and now and now != start)


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete the temporary files that atomic_path left in `folder` for processes that are
    gone (killed with SIGKILL, or by a power cut); a live process's file is never touched.
    Returns what was deleted."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _PARTIAL_RE.match(name)
        if m and not _alive(int(m.group(1)), int(m.group(2))):
            with contextlib.suppress(OSError):
                (Path(folder) / name).unlink()
                removed.append(Path(folder) / name)
    return removed


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a unique temporary path beside `target` (`.NAME.p<pid>-<start>.XXXX<suffix>`,
    naming the writing process); on success it replaces `target` atomically, on any
    exception (Ctrl-C included) it is deleted. Whatever writes to the temporary path must
    close it before the block ends. A process killed outright leaves it behind:
    remove_stale_partials finds it by the process id."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_writer_tag()}.", suffix=suffix,
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: Path, payload: bytes) -> None:
    with atomic_path(target, suffix=".tmp") as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)


def atomic_write_json(target: Path, obj: Any) -> None:
    atomic_write_bytes(target, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path, default: Any = None) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LlamactlError(f"{path} is not valid JSON: {exc}",
                            hint="move it aside; llamactl will start a new one") from exc


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = -1) -> Iterator[None]:
    """An inter-process lock on `path` (a .lock file beside the resource)."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield


def free_bytes(folder: Path) -> int:
    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_free_space(folder: Path, needed: int, what: str = "this") -> None:
    """Raise exit 8 when `folder`'s file system has less than `needed` bytes free.
    LLAMACTL_FAKE_FREE_BYTES (tests) replaces the measured free space."""
    fake = os.environ.get("LLAMACTL_FAKE_FREE_BYTES")
    free = int(fake) if fake else free_bytes(folder)
    if needed > free:
        raise InsufficientResources(
            f"not enough disk space for {what}: needs {human_bytes(needed)}, "
            f"{human_bytes(free)} free in {folder}",
            hint="free some space (`llamactl rm MODEL`), or point HF_HOME/LLAMACTL_HOME elsewhere",
        )
