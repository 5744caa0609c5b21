"""The bounded pool where uploaded photos are decoded, searched for faces and embedded: the event loop only
waits on it, a full pool answers 503 at once instead of queueing without end, and a request waits for its photos
only until its time limit (counted from when the request started)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.exceptions import HTTPException

from deepmetric.validation import check_non_negative_int, check_positive_float, check_positive_int

Result = TypeVar("Result")


def retry_after(timeout: float) -> str:
    """The ``Retry-After`` of a 503 under a ``timeout`` second limit: whole seconds, as the header wants; a task
    usually takes well under the limit."""
    return str(max(1, round(timeout / 4)))


class WorkerPool:
    """``workers`` threads and room for ``max_queued`` more tasks waiting; ``run`` refuses a task beyond that
    with 503 (``Retry-After``), and gives up waiting with 503 too after ``timeout`` seconds or at the request's
    deadline, whichever comes first (``for_request`` binds the deadline).

    A task that timed out keeps its place until its thread really finishes (a thread cannot be stopped), so the
    CPU spent on photos stays bounded even when clients give up.
    """

    def __init__(self, *, workers: int, max_queued: int, timeout: float) -> None:
        self.workers = check_positive_int("workers", workers)
        self.max_queued = check_non_negative_int("max_queued", max_queued)
        self.timeout = check_positive_float("timeout", timeout)
        self._slots = threading.BoundedSemaphore(self.workers + self.max_queued)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="deepmetric-photos")

    @property
    def retry_after(self) -> str:
        return retry_after(self.timeout)

    async def run(self, function: Callable[..., Result], *args: Any, deadline: float | None = None) -> Result:
        """``function(*args)`` in a worker; waits until ``deadline`` (``time.monotonic()``; the request's, so the
        time spent receiving its body counts) but never longer than ``timeout``."""
        limit = self.timeout if deadline is None else min(self.timeout, deadline - time.monotonic())
        if limit <= 0:
            raise self._timed_out()
        if not self._slots.acquire(blocking=False):
            raise HTTPException(503, f"busy: all {self.workers} photo workers and {self.max_queued} queue places "
                                     f"are taken; retry later", headers={"Retry-After": self.retry_after})
        try:
            future: Future = self._executor.submit(function, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limit)
        except TimeoutError:
            future.cancel()  # still queued: it never runs; already running: it finishes, then frees its place
            raise self._timed_out() from None

    def _timed_out(self) -> HTTPException:
        return HTTPException(503, f"timed out: the request took longer than its {self.timeout:g} s limit (an "
                                  f"enrolment may still complete: check before sending it again)",
                             headers={"Retry-After": self.retry_after})

    def for_request(self, deadline: float | None) -> RequestWorkers:
        return RequestWorkers(self, deadline)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class RequestWorkers:
    """The pool as one request uses it: every task it runs shares the request's ``deadline``."""

    pool: WorkerPool
    deadline: float | None

    async def run(self, function: Callable[..., Result], *args: Any) -> Result:
        return await self.pool.run(function, *args, deadline=self.deadline)
