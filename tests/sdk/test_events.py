"""Events (client/sse.py and the clients): pages of the tenant's history and the
live stream against the real service; the SSE parser and resuming after a drop
with scripted answers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import httpx
import msgspec
import pytest

from concord import AsyncConcord, Concord, Unauthorized
from concord import protocol as s
from concord.client.sse import _SSE
from tests.sdk.live import API_KEY, TENANT, contact, solo, unique
from tests.sdk.scripted import AGENT_ID, AT, URL, Script, problem
from tests.support.helpers import Stack


def test_events_page_through_the_tenants_history(stack: Stack):
    _, key = solo(stack, 4)
    with Concord(stack.service.url, key) as concord:
        agent = concord.register(unique("sdr"))
        lease = concord.acquire_lease(agent.id, contact())
        page = concord.events()
        assert isinstance(page, s.EventPage)
        assert [e.type for e in page.events] == ["agent.registered", "lease.acquired"]
        assert page.events[1].lease_id == lease.id and page.events[1].agent_id == agent.id
        assert not page.has_more
        assert concord.events(after=page.next_after).events == []
        leases_only = concord.events(after=0, types=["lease"])
        assert [e.type for e in leases_only.events] == ["lease.acquired"]
        first = concord.events(limit=1)
        assert [e.type for e in first.events] == ["agent.registered"] and first.has_more

        stream = concord.stream_events(last_event_id="0")
        assert [next(stream).id, next(stream).id] == [e.id for e in page.events]
        stream.close()


async def test_async_event_stream_sees_new_events(stack: Stack):
    _, key = solo(stack, 5)
    async with AsyncConcord(stack.service.url, key) as concord:
        agent = await concord.register(unique("sdr"))
        seen = (await concord.events()).next_after
        async with aclosing(concord.stream_events(last_event_id=seen, types="lease")) as stream:
            lease = await concord.acquire_lease(agent.id, contact())
            event = await anext(stream)
        assert (event.type, event.lease_id, event.fencing_token) == ("lease.acquired", lease.id, lease.fencing_token)


# --- parsing and resuming (scripted answers) -------------------------------------


def frame(event_id: str, kind: str = "lease.acquired", **extra: Any) -> bytes:
    event = {"id": event_id, "type": kind, "tenantId": TENANT, "at": AT, **extra}
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), kind.encode(), msgspec.json.encode(event))


def test_sse_parser_splits_lines_only_at_cr_and_lf():
    parser = _SSE(None)
    text = b"retry: 1500\n\n: keepalive\r\n" + frame("1-0", reason="line\u2028separator").replace(b"\n", b"\r\n")
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]  # CRLF pairs split across chunks too
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    assert [(e.id, e.type, e.reason) for e in events] == [("1-0", "lease.acquired", "line\u2028separator")]
    assert (parser.last_id, parser.retry) == ("1-0", 1.5)


def test_stream_resumes_after_the_last_event_after_a_drop():
    def dropped() -> Iterator[bytes]:
        yield frame("5-0")
        raise httpx.ReadError("connection reset")

    script = Script(httpx.Response(200, content=dropped()), httpx.Response(200, content=frame("6-0", "lease.released")))
    with Concord(URL, API_KEY, http=script.transport, backoff=0) as concord:
        stream = concord.stream_events(types=["lease"], agent_id=AGENT_ID)
        assert [next(stream).id, next(stream).id] == ["5-0", "6-0"]
        stream.close()
    first, second = script.requests
    assert "last-event-id" not in first.headers and second.headers["Last-Event-ID"] == "5-0"
    assert first.headers["Accept"] == "text/event-stream"
    assert dict(first.url.params) == {"type": "lease", "agentId": AGENT_ID}


async def test_async_stream_resumes_and_raises_final_errors():
    async def dropped():
        yield frame("5-0")
        raise httpx.ReadError("connection reset")

    script = Script(httpx.Response(200, content=dropped()), problem("unauthorized"))
    async with AsyncConcord(URL, API_KEY, http=script.transport, backoff=0) as concord:
        with pytest.raises(Unauthorized):
            async with aclosing(concord.stream_events(last_event_id="4-0")) as stream:
                assert (await anext(stream)).id == "5-0"
                await anext(stream)
    assert [request.headers["Last-Event-ID"] for request in script.requests] == ["4-0", "5-0"]
