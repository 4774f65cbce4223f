"""The answers that wait: a consensus read that waits for its decision (long
poll), and the tenant's event stream (Server-Sent Events). Both listen to the
worker's event feed (store/feed.py) rather than polling Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

import msgspec
from redis.exceptions import RedisError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from concord import protocol as p
from concord.server.http.endpoint import Call, respond, send_answer
from concord.server.store.events import EventFilter, event, id_key
from concord.server.store.feed import Listener

log = logging.getLogger("concord")
T = TypeVar("T")
_encode = msgspec.json.Encoder().encode

# A stream sends a comment this often when there is no event, so proxies and
# clients can tell a quiet stream from a dead one.
KEEPALIVE_SECONDS = 15.0
# A waiting consensus read reads again this often even without an event: agents
# lapsing (no event) can decide a request too.
REREAD_SECONDS = 5.0


class LongPoll(Response):
    """GET consensus?waitSeconds=N on a pending request: the answer waits until the
    request's status leaves pending (woken by its events, read again every
    REREAD_SECONDS) or N seconds pass. Each Redis read keeps the request deadline;
    the wait itself does not count against it."""

    def __init__(self, call: Call, consensus_id: str, wait: int) -> None:
        self.call, self.consensus_id, self.wait = call, consensus_id, wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        consensus = await until_disconnected(receive, self._decided())
        if consensus is not None:
            await send_answer(send, respond(consensus))

    async def _decided(self) -> p.Consensus:
        c, loop = self.call, asyncio.get_running_loop()
        end = loop.time() + self.wait

        async def read() -> p.Consensus:
            async with asyncio.timeout(c.deadline):
                return await c.store.consensus.get(c.tenant, self.consensus_id)

        async with c.store.feed.listen(c.tenant, c.deadline) as listener:
            consensus = await read()  # after listening: a decision from now on wakes us
            while consensus.status == "pending" and (left := end - loop.time()) > 0:
                entry = await listener.get(min(left, REREAD_SECONDS))
                if listener.lost:
                    listener.resume()
                elif entry is not None and self.consensus_id not in entry[1]:
                    continue  # another request's event, or another kind of event
                consensus = await read()
        return consensus


class EventStream(Response):
    """Server-Sent Events: the stream's entries after ``start`` that ``match`` keeps,
    then each new one as it is written. Every event carries its stream id as
    ``id:``, so a client that reconnects with Last-Event-ID misses nothing the
    stream (capped at CONCORD_EVENTS_MAX_LENGTH) still holds."""

    def __init__(self, call: Call, start: str, match: EventFilter) -> None:
        self.call, self.start, self.match = call, start, match

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        c = self.call
        async with c.store.feed.listen(c.tenant, c.deadline) as listener:  # Redis down: 503 before any byte
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
            try:
                await until_disconnected(receive, self._stream(listener, send))
            except (RedisError, OSError, TimeoutError) as exc:  # the client reconnects with Last-Event-ID
                log.warning("Event stream of tenant %s ended: %r", c.tenant, exc)
            except asyncio.CancelledError:
                # The server is shutting down: uvicorn cancels what outlives its graceful
                # shutdown. A stream never ends by itself, so this is its normal end: the
                # client reconnects (to another instance) with Last-Event-ID.
                pass
            await send({"type": "http.response.body", "body": b""})

    async def _stream(self, listener: Listener, send: Send) -> None:
        c, last = self.call, self.start
        while True:
            while True:  # the stream itself, from where this reader is, until it is caught up
                async with asyncio.timeout(c.deadline):
                    batch = await c.store.events.after(c.tenant, last, 500)
                for e in batch:
                    await self._send(send, e)
                if batch:
                    last = batch[-1].id
                if len(batch) < 500:
                    break
            while not listener.lost:
                if listener.closed:
                    return  # the feed stopped: the client reconnects to a new one
                entry = await listener.get(KEEPALIVE_SECONDS)
                if entry is None:
                    await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                elif id_key(entry[0]) > id_key(last):
                    await self._send(send, event(c.tenant, *entry))
                    last = entry[0]
            listener.resume()

    async def _send(self, send: Send, e: p.Event) -> None:
        if self.match(e):
            frame = b"id: %s\nevent: %s\ndata: %s\n\n" % (e.id.encode(), e.type.encode(), _encode(e))
            await send({"type": "http.response.body", "body": frame, "more_body": True})


async def until_disconnected(receive: Receive, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None if the client disconnects first (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task.result() if not task.cancelled() else None
