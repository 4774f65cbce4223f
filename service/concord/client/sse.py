"""The event stream: a Server-Sent Events parser (`_SSE`) and one subscription
across its connections (`_EventStream`), which resumes after the last event seen.
The sync and async clients each drive an `_EventStream` with their own sending."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import httpx

from concord import protocol as p
from concord.client.calls import _EVENT, _Call
from concord.client.errors import ConcordError, _transient

if TYPE_CHECKING:  # only for the annotation: base.py needs nothing of this module
    from concord.client.base import _ClientBase

log = logging.getLogger("concord.client")


class _EventStream:
    """One subscription to the event stream, across its connections: what each
    (re)connection sends, and how long to wait before the next. It resumes after
    the last event seen, and backs off while connections fail in a row."""

    def __init__(self, client: _ClientBase, call: _Call, last_event_id: str | None) -> None:
        self.client, self.call = client, call
        self.parser = _SSE(last_event_id)
        self.failures = 0  # in a row, without an event between them

    def connect(self) -> dict[str, Any]:
        """The keyword arguments of httpx's ``stream`` for the next connection."""
        self.parser.reset()
        options = self.client._request(self.call)
        if self.parser.last_id is not None:
            options["headers"]["Last-Event-ID"] = self.parser.last_id
        options["timeout"] = httpx.Timeout(self.client.timeout, read=self.client.stream_timeout)
        return options

    def feed(self, chunk: bytes) -> list[p.Event]:
        events = self.parser.feed(chunk)
        if events:
            self.failures = 0
        return events

    def reconnect_delay(self, exc: httpx.TransportError | ConcordError | None) -> float | None:
        """Seconds to wait before reconnecting after the connection ended (``exc``
        None) or failed with ``exc``: the server's ``retry``, and after an error also
        a backoff growing with the failures in a row and any Retry-After. None when
        ``exc`` is final (an error answer other than 429 and 5xx): the caller raises it."""
        if isinstance(exc, httpx.ReadTimeout):
            return 0.0  # silent past the server's keep-alives: a dead connection, replace it at once
        delay = self.parser.retry or 0.0
        if exc is None:
            return delay
        error = self.client._error(self.call, exc)
        if not _transient(error):
            return None
        self.failures += 1
        delay = max(delay, self.client._backoff(min(self.failures - 1, 10)), error.retry_after or 0.0)
        log.warning("event stream: %s; reconnecting in %.2f s", error, delay)
        return delay


class _SSE:
    """A Server-Sent Events parser (the WHATWG HTML rules): lines end at CR, LF or
    CRLF only (not at the other characters str.splitlines breaks at, which JSON
    strings may hold); ``data`` lines join with newlines and a blank line
    dispatches them; ``id`` is remembered to resume from; ``retry`` is the
    reconnection delay; ``:`` starts a comment (the server's keep-alives). The
    ``event`` line is not needed: the data, a protocol.Event, names its type."""

    _EOL = re.compile(rb"\r\n|\r|\n")

    def __init__(self, last_id: str | None) -> None:
        self.last_id = last_id
        self.retry: float | None = None  # the reconnection delay the server asked for
        self._buffer = b""
        self._data: list[str] = []

    def reset(self) -> None:
        """A new connection: an event cut off by the drop is discarded."""
        self._buffer, self._data = b"", []

    def feed(self, chunk: bytes) -> list[p.Event]:
        self._buffer += chunk
        events = []
        while match := self._EOL.search(self._buffer):
            if match.group() == b"\r" and match.end() == len(self._buffer):
                break  # maybe the first half of a CRLF split across chunks
            line = self._buffer[: match.start()].decode("utf-8", "replace")
            self._buffer = self._buffer[match.end() :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> p.Event | None:
        if not line:
            data, self._data = self._data, []
            return _EVENT.decode("\n".join(data)) if data else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value) / 1000
        return None
