"""What `Concord` and `AsyncConcord` share: configuration, the httpx client,
building each request, reading each answer, and the retry policy.

The retry policy (`_ClientBase._retry_delay`) repeats a call only where repeating
is safe (`_Call.retry`): every GET and the operations that are idempotent by nature
(register, heartbeat, acquire, renew, send-check, vote), plus a consensus request,
which always carries an Idempotency-Key that stays the same on every attempt.
Release and deregister are never repeated after they may have reached the service
(a repeat answers 404 although the first took effect). Two failures prove nothing
happened, so any call is repeated after them: a connection that could not be
opened, and 429 (the rate limit refuses a request before any work).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import httpx
import msgspec

from concord.client.calls import _Call, _encode
from concord.client.errors import ConcordError, NotConfigured, Unreachable, error_from_response

DEFAULT_URL = "http://127.0.0.1:8080"
USER_AGENT = "concord-python"
# A Retry-After longer than this is not waited out inside a call: the error is raised.
MAX_RETRY_AFTER = 30.0
MAX_BACKOFF = 5.0

log = logging.getLogger("concord.client")


class _ClientBase:
    """What both clients share: configuration, the httpx client, building requests,
    reading answers, the retry policy and the background work they own. A subclass
    names its httpx classes (``_HTTP``, ``_TRANSPORT``) and does the sending."""

    _HTTP: type[httpx.Client] | type[httpx.AsyncClient]
    _TRANSPORT: type[httpx.BaseTransport] | type[httpx.AsyncBaseTransport]

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        http: Any,
        timeout: float,
        max_retries: int,
        backoff: float,
        stream_timeout: float,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        self.url = (url or os.environ.get("CONCORD_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("CONCORD_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.stream_timeout = stream_timeout
        if isinstance(http, self._HTTP):
            self._http, self._owns_http = http, False
        elif http is None or isinstance(http, self._TRANSPORT):
            self._http, self._owns_http = self._HTTP(transport=http, timeout=timeout), True
        else:
            raise TypeError(
                f"http must be an httpx.{self._HTTP.__name__} or an httpx.{self._TRANSPORT.__name__}, "
                f"got {type(http).__name__}"
            )
        # The keep-alives and lease renewals started from this client: closing it stops them.
        self._background: set[Any] = set()

    def _headers(self, call: _Call) -> dict[str, str]:
        """The headers of ``call``; raises NotConfigured without an API key, since
        every call is to /v1, which answers 401 without one: a 401 would not say
        where a key comes from."""
        if not self.api_key:
            raise NotConfigured(
                f"No API key: pass api_key=... to {type(self).__name__}() or set CONCORD_API_KEY "
                "(an API key of your tenant; `concord serve` prints a demo key at start-up)",
                title="No API key",
            )
        headers = {"User-Agent": USER_AGENT, **call.headers, "Authorization": f"Bearer {self.api_key}"}
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    def _request(self, call: _Call) -> dict[str, Any]:
        """The keyword arguments of httpx's ``request`` for ``call``; raises
        NotConfigured when the client cannot send it."""
        options: dict[str, Any] = {
            "method": call.method,
            "url": self.url + call.path,
            "params": call.params,
            "headers": self._headers(call),
        }
        if call.body is not None:
            options["content"] = _encode(call.body)
        if call.wait:  # a long poll: the answer may take that long on top of the usual
            options["timeout"] = self.timeout + call.wait
        return options

    def _answer(self, call: _Call, response: httpx.Response) -> Any:
        if not response.is_success:
            raise error_from_response(response)
        try:
            return call.decoder.decode(response.content)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            detail = f"{call.method} {call.path} answered {response.status_code} with an unexpected body: {exc}"
            raise ConcordError(detail, code="unexpected_response", status=response.status_code) from exc

    def _error(self, call: _Call, exc: httpx.TransportError | ConcordError) -> ConcordError:
        """A failure of ``call`` as a ConcordError: no answer at all is Unreachable."""
        return Unreachable(call.method, self.url + call.path, exc) if isinstance(exc, httpx.TransportError) else exc

    def _retry_delay(self, call: _Call, exc: httpx.TransportError | ConcordError, attempt: int) -> float:
        """Seconds to wait before sending ``call`` again after its attempt number
        ``attempt`` (from 0) failed with ``exc``; raises the failure, as a
        ConcordError, when the call is not to be repeated."""
        error = self._error(call, exc)
        if isinstance(error, Unreachable):
            retry = call.retry or not error.sent
        elif error.status == 429:
            retry = True  # the rate limit refused it before any work
        else:
            retry = call.retry and error.status in (502, 503, 504)
        asked = error.retry_after or 0.0
        if not retry or attempt >= self.max_retries or asked > MAX_RETRY_AFTER:
            raise error
        delay = max(self._backoff(attempt), asked)
        log.info("retrying %s %s in %.2f s after: %s", call.method, call.path, delay, error)
        return delay

    def _backoff(self, attempt: int) -> float:
        """Exponential, with jitter so that clients refused together do not return together."""
        return min(MAX_BACKOFF, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
