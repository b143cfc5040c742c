"""Bench history: results appended, one JSON line each with the machine, to
`bench-history.jsonl` in the data folder (`--save`), and read back (`--history`)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from llamactl.bench.run import BenchRow

HISTORY_FILE = "bench-history.jsonl"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def history_path() -> Path:
    from llamactl import paths

    return paths.data_dir() / HISTORY_FILE


def save_history(rows: Sequence[BenchRow], machine: dict[str, Any]) -> Path:
    """Append one line per row to the history (complete lines, under a lock, fsynced)."""
    from llamactl import paths
    from llamactl.fsutil import file_lock

    target = history_path()
    paths.ensure(target.parent)
    saved_at = _now()
    payload = "".join(json.dumps({"saved_at": saved_at, **r.to_dict(), "machine": machine},
                                 ensure_ascii=False, default=str) + "\n" for r in rows)
    with file_lock(target.with_name(target.name + ".lock")):
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    return target


def load_history() -> tuple[list[dict[str, Any]], int]:
    """(records, number of unreadable lines skipped)."""
    target = history_path()
    records: list[dict[str, Any]] = []
    bad = 0
    try:
        with open(target, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
                else:
                    bad += 1
    except FileNotFoundError:
        pass
    return records, bad
