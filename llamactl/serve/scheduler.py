"""The slots' scheduler: a bounded queue in front of a BatchDecoder and the one thread that
decodes.

Requests wait in the queue (at most `queue_size`; beyond that `submit` raises QueueFull and
the server answers 503). The thread moves waiting jobs into idle slots (the slot whose cache
shares the longest prefix with the prompt) and runs one batched step after another while any
slot is busy; it sleeps when there is nothing to do. A job whose `cancelled` flag is set (its
client went away) is dropped from the queue or stopped at the next step, freeing its slot.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from llamactl.engine.batch import BatchDecoder, Job
from llamactl.engine import Stats
from llamactl.errors import LlamactlError


class QueueFull(Exception):
    """Every slot is busy and the queue holds `queue_size` requests already."""


class Scheduler:
    def __init__(self, decoder: BatchDecoder, queue_size: int = 64, name: str = "model"):
        self.decoder = decoder
        self.queue_size = max(0, queue_size)
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"decode-{name}", daemon=True)
        self._thread.start()

    # -- what the HTTP side calls -----------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            # jobs in the deque go to idle slots first; the rest is the queue
            if len(self._queue) - self.decoder.idle >= self.queue_size:
                raise QueueFull(f"all {self.decoder.n_slots} slots are busy and "
                                f"{self.queue_size} requests are waiting")
            self._queue.append(job)
            self._cv.notify()

    def wake(self) -> None:
        """Look at the cancelled flags now (a client went away)."""
        with self._cv:
            self._cv.notify()

    def status(self) -> dict[str, int]:
        with self._cv:
            busy = self.decoder.busy
            return {"slots": self.decoder.n_slots, "busy": busy, "idle": self.decoder.n_slots - busy,
                    "queued": len(self._queue), "tokens_decoded": self.decoder.tokens_decoded}

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is left and end the thread."""
        with self._cv:
            self._stopping = True
            for job in self._queue:
                job.cancelled = True
            for slot in self.decoder.slots:
                if slot.job is not None:
                    slot.job.cancelled = True
            self._cv.notify()
        self._thread.join(timeout)

    # -- the decoding thread ----------------------------------------------------------------

    def _admit(self) -> None:
        decoder = self.decoder
        while self._queue and decoder.idle:
            job = self._queue.popleft()
            if job.cancelled:
                _emit(job, _empty_stats(job))
                continue
            index = decoder.choose_slot(job.prompt)
            assert index is not None
            try:
                decoder.start(index, job)
            except LlamactlError as exc:
                _emit(job, exc)

    def _run(self) -> None:
        decoder = self.decoder
        while True:
            with self._cv:
                while not self._stopping and not self._queue and not decoder.busy:
                    self._cv.wait()
                if self._stopping:
                    decoder.cancel_finished()
                    while self._queue:
                        _emit(self._queue.popleft(), LlamactlError("the server is shutting down"))
                    return
                self._admit()
            try:
                decoder.step()
            except Exception as exc:  # a bug or a llama.cpp failure: fail the jobs, keep serving
                for slot in decoder.slots:
                    if slot.job is not None:
                        _emit(slot.job, exc)
                        slot.job.cancelled = True
                try:
                    decoder.cancel_finished()
                except Exception:
                    pass


def _emit(job: Job, item: Any) -> None:
    try:
        job.emit(item)
    except Exception:
        pass


def _empty_stats(job: Job) -> Stats:
    return Stats(prompt_tokens=len(job.prompt), prompt_tokens_evaluated=0, completion_tokens=0,
                 prompt_seconds=0.0, generation_seconds=0.0, ttft_seconds=0.0, prompt_tps=0.0,
                 generation_tps=0.0, finish_reason="interrupted")
