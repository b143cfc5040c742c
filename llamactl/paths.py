"""Where things live. Read at call time, never at import time.

LLAMACTL_HOME, when set, holds everything (config/, data/, cache/, state/). Otherwise the
platform's folders from platformdirs. Hugging Face downloads go to the HF cache
(HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) so files are shared with
other Hugging Face tools."""

from __future__ import annotations

import os
from pathlib import Path

from llamactl.errors import LlamactlError

APP = "llamactl"


def _home() -> Path | None:
    value = os.environ.get("LLAMACTL_HOME")
    return Path(value).expanduser() if value else None


def _platform(kind: str) -> Path:
    import platformdirs

    getter = {
        "config": platformdirs.user_config_dir,
        "data": platformdirs.user_data_dir,
        "cache": platformdirs.user_cache_dir,
        "state": platformdirs.user_state_dir,
    }[kind]
    return Path(getter(APP, appauthor=False))


def _dir(kind: str) -> Path:
    home = _home()
    return home / kind if home is not None else _platform(kind)


def config_dir() -> Path:
    return _dir("config")


def data_dir() -> Path:
    return _dir("data")


def cache_dir() -> Path:
    return _dir("cache")


def state_dir() -> Path:
    return _dir("state")


def models_dir() -> Path:
    """Where llamactl's own model files (converted, quantized) live."""
    return data_dir() / "models"


def hf_home() -> Path:
    value = os.environ.get("HF_HOME")
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface"


def hf_hub_cache() -> Path:
    value = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(value).expanduser() if value else hf_home() / "hub"


def check_home() -> None:
    """Fail with one line when LLAMACTL_HOME is unusable (a file, or not writable)."""
    home = _home()
    if home is None:
        return
    if home.exists() and not home.is_dir():
        raise LlamactlError(f"LLAMACTL_HOME is not a folder: {home}",
                            hint="point LLAMACTL_HOME at a folder, or unset it")
    probe = home
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise LlamactlError(f"LLAMACTL_HOME is not writable: {home}",
                            hint="choose a folder you can write to, or unset LLAMACTL_HOME")


def ensure(path: Path) -> Path:
    """Create a folder (and parents); return it. Errors become one-line LlamactlErrors."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LlamactlError(f"cannot create folder {path}: {exc.strerror or exc}") from exc
    return path


def all_paths() -> dict[str, str]:
    return {
        "home": str(_home() or ""),
        "config": str(config_dir()),
        "data": str(data_dir()),
        "cache": str(cache_dir()),
        "state": str(state_dir()),
        "models": str(models_dir()),
        "hf_hub_cache": str(hf_hub_cache()),
    }
