"""What `Concord` and `AsyncConcord` share: configuration, the httpx client,
the credentials, building each request, reading each answer, and the retry policy.

Credentials: a client holds a tenant API key (``api_key``, CONCORD_API_KEY) for
the calls of a key (register, rotate a credential, deregister, a forced release,
adding and lifting suppressions, and reads), and the agent credentials it knows
(`_ClientBase._credentials`): each agent it registered or rotated, an agent handed
to ``agent(id, credential=...)``, and its own agent's (``agent_credential``,
CONCORD_AGENT_CREDENTIAL: the process of an agent that was handed one). A call
that acts as an agent goes with that agent's credential, the newest the client
knows; an API key never acts as an agent.

The retry policy (`_ClientBase._retry_delay`) repeats a call only where repeating
is safe (`_Call.retry`): every GET and the operations that are idempotent by nature
(heartbeat, acquire, renew, send-check, vote, adding suppressions one by one or in
bulk: a repeat finds what the first wrote), register and rotating a credential
(each answers a new credential and refuses the earlier ones, so the last answer
holds the current one), plus a consensus request, which always carries an
Idempotency-Key that stays the same on every attempt. Every attempt of a call
goes with the same credential, and a 401 or 403 is final: never repeated.
Release, deregister and lifting a suppression are never repeated after they may
have reached the service (a repeat answers 404 although the first took effect).
Two failures prove nothing happened, so any call is repeated after them: a
connection that could not be opened, and 429 (the rate limit refuses a request
before any work).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import httpx
import msgspec

from concord import protocol as p
from concord.client.calls import AGENT, GATE, KEY, _Call, _encode
from concord.client.errors import ConcordError, NotConfigured, Unreachable, credential_agent, error_from_response

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
        agent_credential: str | None,
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
        # agent id -> the newest credential of that agent this client knows (never logged or shown).
        self._credentials: dict[str, str] = {}
        self._own: str | None = None  # the agent of agent_credential
        own = agent_credential if agent_credential is not None else os.environ.get("CONCORD_AGENT_CREDENTIAL")
        if own:
            self._own = self._remember(own, "agent_credential (or CONCORD_AGENT_CREDENTIAL)")
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

    # --- credentials ---------------------------------------------------------------

    @property
    def agent_credential(self) -> str | None:
        """The credential of this client's own agent (``agent_credential``, else
        CONCORD_AGENT_CREDENTIAL), the newest this client knows; None without one."""
        return self._credentials.get(self._own) if self._own is not None else None

    def _remember(self, credential: str, source: str, agent_id: str | None = None) -> str:
        """Keep ``credential`` as its agent's current one; answer the agent's id.
        Raises NotConfigured for a token that is no agent credential (or, when
        ``agent_id`` is given, not that agent's)."""
        named = credential_agent(credential)
        if named is None:
            raise NotConfigured(
                f"{source} is not an agent credential (concord-agent.<tenant>.<agentId>.<secret>): "
                "give it exactly as registering the agent answered it (its `credential` member)",
                title="Malformed agent credential",
            )
        if agent_id is not None and named != agent_id:
            raise NotConfigured(
                f"{source} is the credential of agent {named}, not of {agent_id}: give that agent's own credential",
                title="Another agent's credential",
            )
        self._credentials[named] = credential
        return named

    def _own_agent(self) -> str:
        """The id of this client's own agent; raises NotConfigured without one."""
        if self._own is None:
            raise NotConfigured(
                f"No agent credential: me() is the agent whose credential this client was given. Pass "
                f"agent_credential=... to {type(self).__name__}() or set CONCORD_AGENT_CREDENTIAL (registering "
                "the agent answers it), or use the handle register() answers",
                title="No agent credential",
            )
        return self._own

    def _credential_of(self, agent_id: str | None) -> str | None:
        """The newest credential this client knows for ``agent_id`` (None: its own agent's)."""
        return self.agent_credential if agent_id is None else self._credentials.get(agent_id)

    def _acting_credential(self, agent_id: str | None) -> str | None:
        """The credential a call acting as ``agent_id`` goes with: that agent's, else
        this client's own agent's (the service refuses it with agent_mismatch when it
        is another agent's); None when the client has neither."""
        return self._credential_of(agent_id) or self.agent_credential

    def _agent_token(self, agent_id: str | None) -> str:
        """As _acting_credential; raises NotConfigured when the client has none."""
        token = self._acting_credential(agent_id)
        if token is None:
            agent = f"agent {agent_id}" if agent_id is not None else "this client's agent"
            raise NotConfigured(
                f"No agent credential for {agent}: an agent acts only with its own credential, never with an "
                f"API key. Register the agent with this client (register() answers a handle that carries its "
                f"credential), or, in the process of an agent that was handed its credential, pass "
                f"agent_credential=... to {type(self).__name__}() or set CONCORD_AGENT_CREDENTIAL",
                title="No agent credential",
            )
        return token

    def _key_token(self) -> str:
        if not self.api_key:
            raise NotConfigured(
                f"No API key: pass api_key=... to {type(self).__name__}() or set CONCORD_API_KEY "
                "(an API key of your tenant; `concord serve` prints a demo key at start-up)",
                title="No API key",
            )
        return self.api_key

    def _token(self, call: _Call) -> str:
        """The bearer token ``call`` goes with (calls.py says which principal each
        operation needs); raises NotConfigured when the client has none that may:
        every call is to /v1, and a 401 would not say where a credential comes from."""
        if call.principal == KEY:
            return self._key_token()
        if call.principal == AGENT:
            return self._agent_token(call.agent_id)
        if call.principal == GATE:  # the agent itself when the client holds its credential, else a (gate) key
            return self._credential_of(call.agent_id) or self.api_key or self._agent_token(call.agent_id)
        token = self.api_key or self.agent_credential  # a read: a key, or the agent's own credential
        if not token:
            raise NotConfigured(
                f"No credential: pass api_key=... to {type(self).__name__}() or set CONCORD_API_KEY "
                "(an API key of your tenant; `concord serve` prints a demo key at start-up), or, in an "
                "agent's process, agent_credential=... or CONCORD_AGENT_CREDENTIAL (its own credential)",
                title="No credential",
            )
        return token

    def _registered(self, answer: p.RegisteredAgent) -> p.Agent:
        """Keep the credential registering answered; the agent without it (a handle's
        ``info`` is shown and logged: the credential stays in the client)."""
        self._remember(answer.credential, "the credential registering answered", answer.id)
        return p.Agent(**{name: getattr(answer, name) for name in p.Agent.__struct_fields__})

    def _rotated(self, answer: p.AgentCredential) -> p.AgentCredential:
        self._remember(answer.credential, "the rotated credential", answer.agent_id)
        return answer

    # --- requests and answers --------------------------------------------------------

    def _headers(self, call: _Call) -> dict[str, str]:
        """The headers of ``call``; raises NotConfigured without a credential it may go with."""
        headers = {"User-Agent": USER_AGENT, **call.headers, "Authorization": f"Bearer {self._token(call)}"}
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
