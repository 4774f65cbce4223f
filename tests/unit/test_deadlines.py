"""Request deadlines (concord.server.http.deadlines): work past its deadline raises
TimeoutError in its own task, other work is untouched, and a cancellation that is
not the deadline's stays a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from concord.server.http.deadlines import Deadlines


async def test_work_that_ends_in_time_returns_its_value():
    deadlines = Deadlines(5)

    async def work() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await deadlines.run(work()) == "done"


async def test_work_past_its_deadline_raises_timeout_and_leaves_its_task_usable():
    deadlines = Deadlines(0.05)
    never = asyncio.Event()

    with pytest.raises(TimeoutError):
        await deadlines.run(never.wait())

    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # not cancelled again later


async def test_only_the_requests_past_their_deadline_are_cancelled():
    deadlines = Deadlines(0.05)
    never, release = asyncio.Event(), asyncio.Event()

    async def stuck() -> str:
        await never.wait()
        return "stuck"

    async def quick() -> str:
        await release.wait()
        return "quick"

    async def one(work) -> object:
        try:
            return await deadlines.run(work)
        except TimeoutError as exc:
            return exc

    stuck_tasks = [asyncio.create_task(one(stuck())) for _ in range(5)]
    quick_tasks = [asyncio.create_task(one(quick())) for _ in range(5)]
    release.set()

    assert await asyncio.gather(*quick_tasks) == ["quick"] * 5
    assert all(isinstance(r, TimeoutError) for r in await asyncio.gather(*stuck_tasks))


async def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    deadlines = Deadlines(30)
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(deadlines.run(work()))
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
