"""Progress on stderr for long work: downloads (a rich bar per file on a terminal, a line per
file otherwise) and tensor-by-tensor work (convert, quantize: a bar on a terminal, a line
per ~10% otherwise). Quiet displays draw nothing."""

from __future__ import annotations

import time
from typing import Any

from llamactl.cli import output
from llamactl.models.pull import PullProgress


class TensorProgress:
    """`progress(tensor, done, total)` as convert (bytes) and quantize (tensor counts) call it."""

    def __init__(self, verb: str, quiet: bool, *, in_bytes: bool) -> None:
        self.verb, self.quiet, self.in_bytes = verb, quiet, in_bytes
        self.count = 0
        self.next_pct = 10
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, name: str, done: int, total: int) -> None:
        if self.quiet:
            return
        from llamactl.fsutil import human_bytes

        self.count += 1
        if output.stderr_is_tty():
            if self._bar is None:
                from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn,
                                           Progress as Bar, TextColumn)

                amount = DownloadColumn() if self.in_bytes else MofNCompleteColumn()
                self._bar = Bar(TextColumn(self.verb), BarColumn(), amount,
                                TextColumn("{task.fields[tensor]}"), console=output.stderr_console(),
                                transient=True)
                self._bar.start()
                self._task = self._bar.add_task(self.verb, total=total, tensor="")
            label = f"{self.count} tensors  {name}" if self.in_bytes else name
            self._bar.update(self._task, completed=done if self.in_bytes else done - 1, tensor=label)
            return
        pct = 100 * done // max(1, total)
        if pct >= self.next_pct or done == total:
            if self.in_bytes:
                output.info(f"{self.verb}: {self.count} tensors, {human_bytes(done)} of "
                            f"{human_bytes(total)} ({pct}%)")
            else:
                output.info(f"{self.verb}: tensor {done} of {total} ({name})")
            self.next_pct = (pct // 10 + 1) * 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class PlainPull(PullProgress):
    """One short line per file (stderr is not a terminal)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.done = 0
        self.converting = TensorProgress("converting", False, in_bytes=True)

    def file_start(self, filename: str, total: int | None, done: int, action: str) -> None:
        from llamactl.fsutil import human_bytes

        self.start, self.done = time.monotonic(), 0
        size = human_bytes(total) if total is not None else "unknown size"
        verb = {"download": "downloading", "resume": "resuming", "verify": "verifying"}[action]
        extra = f" from {human_bytes(done)}" if action == "resume" else ""
        output.info(f"{verb} {filename} ({size}){extra}")

    def advance(self, n: int) -> None:
        self.done += n

    def file_end(self, filename: str, status: str) -> None:
        output.info(f"{filename}: {status}, sha256 ok")

    def waiting(self, what: str) -> None:
        output.info(f"waiting for another pull of {what} to finish")

    def step(self, message: str) -> None:
        self.close()
        output.info(message)

    def convert(self, tensor: str, done: int, total: int) -> None:
        self.converting(tensor, done, total)

    def close(self) -> None:
        """Stop drawing (before a prompt, a new stage, or the end)."""
        self.converting.close()


class RichPull(PlainPull):
    """A rich progress bar per file (a terminal), started at the first file."""

    def __init__(self) -> None:
        super().__init__()
        self.progress: Any = None
        self.task: Any = None

    def _live(self) -> Any:
        if self.progress is None:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                     console=output.stderr_console(), transient=False)
            self.progress.start()
        return self.progress

    def file_start(self, filename: str, total: int | None, done: int, action: str) -> None:
        label = {"download": "", "resume": "(resume) ", "verify": "(verify) "}[action]
        name = filename.rsplit("/", 1)[-1]
        self.task = self._live().add_task(f"{label}{name}", total=total)

    def advance(self, n: int) -> None:
        if self.task is not None and self.progress is not None:
            self.progress.advance(self.task, n)

    def file_end(self, filename: str, status: str) -> None:
        if self.task is not None and self.progress is not None:
            total = self.progress.tasks[-1].total
            if total:
                self.progress.update(self.task, completed=total)
        self.task = None

    def close(self) -> None:
        super().close()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class QuietPull(PlainPull):
    def file_start(self, *a: Any) -> None: ...
    def file_end(self, *a: Any) -> None: ...
    def waiting(self, what: str) -> None: ...
    def step(self, message: str) -> None: ...
    def convert(self, tensor: str, done: int, total: int) -> None: ...


def pull_display(quiet: bool) -> PlainPull:
    """The display for a pull: nothing when quiet, bars on a terminal, lines otherwise."""
    if quiet:
        return QuietPull()
    if output.stderr_is_tty():
        return RichPull()
    return PlainPull()
