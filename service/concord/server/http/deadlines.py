"""Request deadlines from one timer per worker, instead of one per request.

Every request's Redis work must end within CONCORD_REDIS_TIMEOUT_SECONDS, or the
request answers 503. ``asyncio.timeout`` would give each request a timer of its
own, and arming and cancelling a timer costs about as much as the rest of a
heartbeat's Python work. All deadlines have the same length, so they expire in
the order they start: a queue of them, and one timer that wakes every ``tick``
while requests are in flight, cancels the requests past their deadline. Such a
request sees ``TimeoutError``, exactly as under ``asyncio.timeout``, at most one
tick late.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

RUNNING, DONE, EXPIRED = 0, 1, 2


class Deadlines:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        # Late by at most a twentieth of the deadline, and never more than 0.1 s.
        self.tick = min(max(seconds / 20, 0.005), 0.1)
        self._queue: deque[list[Any]] = deque()  # [expires at, task, RUNNING | DONE | EXPIRED]
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, work: Awaitable[T]) -> T:
        """Await ``work`` in the current task; TimeoutError past the deadline."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        entry = [loop.time() + self.seconds, task, RUNNING]
        self._queue.append(entry)
        if self._timer is None:
            self._timer = loop.call_later(self.tick, self._expire)
        try:
            return await work
        except asyncio.CancelledError:
            # Ours if the deadline cancelled the task and nobody else did as well.
            if entry[2] == EXPIRED and task.uncancel() == 0:
                raise TimeoutError(f"the deadline of {self.seconds} s passed") from None
            raise
        finally:
            if entry[2] == RUNNING:
                entry[2] = DONE

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now, queue = loop.time(), self._queue
        while queue and (queue[0][2] != RUNNING or queue[0][0] <= now):
            entry = queue.popleft()
            if entry[2] == RUNNING:
                entry[2] = EXPIRED
                entry[1].cancel()
        self._timer = loop.call_later(self.tick, self._expire) if queue else None
