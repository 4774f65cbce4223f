"""The synchronous client: `Concord` and its handles; background work (keep-alive
heartbeats, lease renewal) runs on daemon threads.

Every operation is a `_Call` built by `_Wire` (calls.py); this module sends it
with an httpx.Client, waits between retries with time.sleep, and answers with the
protocol's msgspec Structs (concord.protocol), so the wire format has one
definition. aio.py mirrors it for asyncio, name for name and method for method
(tests/sdk checks that the signatures agree). What the two share, and every part
that sends nothing, lives in base.py, handles.py, sse.py and errors.py.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx

from concord import protocol as p
from concord.client.base import _ClientBase
from concord.client.calls import Duration, VoteChoice, _Call, _long_polls, _Wire
from concord.client.errors import ConcordError, error_from_response
from concord.client.handles import (
    _AgentHandleBase,
    _consensus_id,
    _ConsensusHandleBase,
    _KeepAliveBase,
    _LeaseHandleBase,
    _Renewal,
)
from concord.client.sse import _EventStream

__all__ = ["AgentHandle", "Concord", "ConsensusHandle", "KeepAlive", "LeaseHandle"]


class Concord(_ClientBase):
    """The synchronous client; background work runs on daemon threads.

    ``url`` defaults to CONCORD_URL, then http://127.0.0.1:8080; ``api_key`` to
    CONCORD_API_KEY: a tenant API key, for registering, rotating, deregistering and
    reading. ``agent_credential`` (default CONCORD_AGENT_CREDENTIAL) is the
    credential of the agent this process is, when it was handed one: ``me()`` is
    that agent's handle. A call that acts as an agent (heartbeat, leases,
    send-check, consensus) goes with that agent's own credential: the one
    ``register()`` answered, else ``agent_credential``; a call without the
    credential it needs raises NotConfigured and sends nothing. ``http`` is an
    httpx.Client to send with (it stays open when this client closes) or an httpx
    transport. ``timeout`` bounds each request in seconds; ``max_retries``
    and ``backoff`` (the first delay, in seconds) shape the retries of the calls that
    are safe to repeat. ``stream_timeout``: an event stream that stays silent this
    long is reconnected. Safe to share between threads."""

    _HTTP, _TRANSPORT = httpx.Client, httpx.BaseTransport
    _http: httpx.Client
    _background: set[KeepAlive | LeaseHandle]

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        agent_credential: str | None = None,
        http: httpx.Client | httpx.BaseTransport | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.1,
        stream_timeout: float = 60.0,
    ) -> None:
        super().__init__(url, api_key, agent_credential, http, timeout, max_retries, backoff, stream_timeout)

    def close(self) -> None:
        """Stop every keep-alive and lease renewal started from this client, then close its connections."""
        for worker in list(self._background):
            worker._halt()
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Concord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: _Call) -> Any:
        request = self._request(call)  # the same on every attempt; NotConfigured raises before any
        for attempt in itertools.count():
            try:
                return self._answer(call, self._http.request(**request))
            except (httpx.TransportError, ConcordError) as exc:
                delay = self._retry_delay(call, exc, attempt)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # agents

    def register(
        self, name: str, role: str | None = None, metadata: dict[str, Any] | None = None, kind: str | None = None
    ) -> AgentHandle:
        """Register the agent ``name``, or update it (omitted role and metadata keep
        their values), with the API key (admin or enroll). Registering counts as a
        heartbeat. The handle carries the agent's new credential (``credential``),
        which its calls act with; the agent's earlier credential is refused from now
        on. ``kind="human"`` registers a human member (an admin key's), whose handle
        only votes. Safe to repeat."""
        return AgentHandle(self, self._registered(self._run(_Wire.register(name, role, metadata, kind))))

    def agent(self, agent_id: str, credential: str | None = None) -> AgentHandle:
        """A handle for an existing agent (no request; ``info`` stays None until
        ``refresh()``). It acts with ``credential`` when given (the agent's own), else
        with the credential this client knows for it."""
        if credential is not None:
            self._remember(credential, "credential", agent_id)
        return AgentHandle(self, agent_id)

    def me(self) -> AgentHandle:
        """The handle of this client's own agent, the one ``agent_credential`` (or
        CONCORD_AGENT_CREDENTIAL) is the credential of (no request); raises
        NotConfigured without one."""
        return AgentHandle(self, self._own_agent())

    def rotate_credential(self, agent_id: str) -> p.AgentCredential:
        """Give the agent a new credential, with the API key (admin or enroll): the
        current one is refused from now on. The client keeps the new one, so its
        handles of the agent act with it; ``credential`` is the only copy shown."""
        return self._rotated(self._run(_Wire.rotate_credential(agent_id)))

    def heartbeat(self, agent_id: str) -> p.Heartbeat:
        """Record that the agent is alive; it stays active for the liveness window (5 minutes by default)."""
        return self._run(_Wire.heartbeat(agent_id))

    def get_agent(self, agent_id: str) -> p.Agent:
        return self._run(_Wire.get_agent(agent_id))

    def list_agents(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> p.AgentList:
        return self._run(_Wire.list_agents(status, limit, cursor))

    def remove_agent(self, agent_id: str) -> p.AgentRemoved:
        """Deregister the agent, revoke its credential and release its leases, with an
        admin key. Never repeated automatically."""
        return self._run(_Wire.remove_agent(agent_id))

    # leases

    def acquire_lease(
        self, agent_id: str, contact: str, duration: Duration | None = None, intent: str | None = None
    ) -> p.Lease:
        """Lease ``contact`` for ``duration`` (default 30 minutes); raises LeaseConflict
        when another active agent holds it. The holder asking again gets its own lease,
        expiry moved, so this is safe to repeat."""
        return self._run(_Wire.acquire_lease(agent_id, contact, duration, intent))

    def renew_lease(self, lease_id: str, agent_id: str, duration: Duration | None = None) -> p.Lease:
        """Move the lease's expiry to now + ``duration``; the fencing token stays."""
        return self._run(_Wire.renew_lease(lease_id, agent_id, duration))

    def release_lease(self, lease_id: str, agent_id: str | None = None, *, force: bool = False) -> p.Released:
        """Release the lease as its holder, ``agent_id`` (None: this client's own agent),
        with the holder's credential; with ``force``, whoever holds it, with an admin
        key (a forced release). Never repeated automatically."""
        return self._run(_Wire.release_lease(lease_id, agent_id, force))

    def get_lease(self, lease_id: str) -> p.Lease:
        return self._run(_Wire.get_lease(lease_id))

    def list_leases(
        self,
        agent_id: str | None = None,
        contact: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> p.LeaseList:
        """Leases of an agent and/or of a contact (give at least one), newest grant first."""
        return self._run(_Wire.list_leases(agent_id, contact, limit, cursor))

    def send_check(self, agent_id: str, contact: str, fencing_token: int | None = None) -> p.SendCheck:
        """May the agent email the contact now? Refusals are answers (``allowed`` False),
        not errors. Asked with the agent's credential when the client holds it, else
        with the API key (a gate or admin key: an email pipeline's)."""
        return self._run(_Wire.send_check(agent_id, contact, fencing_token))

    # suppressions

    def suppress(self, entry: str, reason: p.SuppressionReason, note: str | None = None) -> p.Suppression:
        """Suppress ``entry``, a contact (any spelling of it) or ``@domain`` (every contact
        at that domain), with the API key (an admin or gate key; an agent adds one with
        its handle's ``suppress``): no agent may lease it (Suppressed) or email it from
        now on. ``reason``: unsubscribed, bounced, complained or manual. A gate key finds
        an existing suppression as it stands; an admin key replaces its reason and note.
        Safe to repeat."""
        return self._run(_Wire.suppress(entry, reason, note, None))

    def import_suppressions(self, items: Iterable[p.SuppressionItem | Mapping[str, Any]]) -> p.SuppressionImport:
        """Suppress 1 to 500 entries in one call (SuppressionItem, or dicts ``{entry,
        reason, note?}``), with the API key; existing entries as for ``suppress``. An
        invalid entry refuses the whole batch (ValidationError naming it); more than 500
        raise ValueError, sending nothing. Safe to repeat; ``written`` counts what the
        attempt that answered wrote (not what an earlier one, answer lost, did)."""
        return self._run(_Wire.import_suppressions(items, None))

    def get_suppression(self, entry: str) -> p.Suppression:
        """The suppression of a contact (under any spelling) or of ``@domain``; raises SuppressionNotFound."""
        return self._run(_Wire.get_suppression(entry))

    def list_suppressions(self, limit: int | None = None, cursor: str | None = None) -> p.SuppressionList:
        """The tenant's suppressions in the order of their entries (``@`` domains first)."""
        return self._run(_Wire.list_suppressions(limit, cursor))

    def lift_suppression(self, entry: str) -> p.Suppression:
        """Lift the suppression of ``entry``, with an admin key; answers what it was.
        Never repeated automatically."""
        return self._run(_Wire.lift_suppression(entry))

    # consensus

    def request_consensus(
        self,
        agent_id: str,
        action: str,
        contact: str | None = None,
        reason: str | None = None,
        timeout: Duration | None = None,
        idempotency_key: str | None = None,
    ) -> ConsensusHandle:
        """Ask the active peers to approve ``action`` within ``timeout`` (default 1
        hour). Sent with an Idempotency-Key (a new uuid4 unless given), the same on
        every retry, so a retry never creates a second request."""
        call = _Wire.request_consensus(agent_id, action, contact, reason, timeout, idempotency_key)
        return ConsensusHandle(self, self._run(call))

    def consensus(self, consensus_id: str) -> ConsensusHandle:
        """A handle for an existing consensus request (no request until ``refresh()`` or ``wait()``)."""
        return ConsensusHandle(self, consensus_id)

    def vote(self, consensus_id: str, agent_id: str, vote: VoteChoice, reason: str | None = None) -> p.Consensus:
        """Vote ``approve`` or ``reject``; the same vote again is answered as the first was."""
        return self._run(_Wire.vote(consensus_id, agent_id, vote, reason))

    def get_consensus(self, consensus_id: str, wait: Duration | None = None) -> p.Consensus:
        """Read a consensus request. With ``wait`` (1-60 s) the service answers as soon
        as it leaves pending, or after ``wait`` with it still pending."""
        return self._run(_Wire.get_consensus(consensus_id, wait))

    def list_consensus(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> p.ConsensusList:
        return self._run(_Wire.list_consensus(status, limit, cursor))

    def wait_consensus(self, consensus_id: str, timeout: Duration | None = None) -> p.Consensus:
        """The request once it is decided, or as it is (pending) when ``timeout``
        passes; with no timeout, until it is decided or expires. Long polls, never
        busy polling."""
        for wait in _long_polls(timeout):
            consensus = self.get_consensus(consensus_id, wait=wait)
            if consensus.status != "pending":
                break
        return consensus

    # events

    def events(
        self,
        after: str | int | None = None,
        limit: int | None = None,
        types: str | list[str] | None = None,
        agent_id: str | None = None,
        contact: str | None = None,
    ) -> p.EventPage:
        """One page of the tenant's events, oldest first: ``events``, ``next_after``
        (pass it as ``after`` for the next page) and ``has_more``. ``after`` 0 (the
        default without ``limit``) starts at the oldest event kept. ``types``: event
        types or families ("lease", "consensus.resolved")."""
        return self._run(_Wire.events(after, limit, types, agent_id, contact))

    def stream_events(
        self,
        last_event_id: str | None = None,
        types: str | list[str] | None = None,
        agent_id: str | None = None,
        contact: str | None = None,
    ) -> Iterator[p.Event]:
        """The tenant's events as they happen (Server-Sent Events), as schemas.Event,
        without end: from the next event, or after ``last_event_id`` ("0": from the
        oldest kept). After a dropped connection it reconnects and resumes after the
        last event seen (Last-Event-ID); an error answer other than 429/5xx is raised."""
        stream = _EventStream(self, _Wire.event_stream(types, agent_id, contact), last_event_id)
        while True:
            try:
                with self._http.stream(**stream.connect()) as response:
                    if not response.is_success:
                        response.read()
                        raise error_from_response(response)
                    for chunk in response.iter_bytes():
                        yield from stream.feed(chunk)
                delay = stream.reconnect_delay(None)  # the server ended the stream
            except (httpx.TransportError, ConcordError) as exc:
                delay = stream.reconnect_delay(exc)
                if delay is None:
                    raise
            time.sleep(delay)


class AgentHandle(_AgentHandleBase):
    """One registered agent: ``id``, ``info`` (the schemas.Agent last read, or None)
    and the operations bound to it. Closing the handle (or leaving its ``with``
    block) stops the keep-alives and lease renewals it started; it does not
    deregister the agent (``remove()`` does)."""

    client: Concord
    _background: set[KeepAlive | LeaseHandle]

    def refresh(self) -> p.Agent:
        self.info = self.client.get_agent(self.id)
        return self.info

    def heartbeat(self) -> p.Heartbeat:
        return self.client.heartbeat(self.id)

    def keep_alive(self, interval: float = 60.0) -> KeepAlive:
        """Heartbeat now and then every ``interval`` seconds on a daemon thread, until
        the returned KeepAlive (also a context manager), this handle or the client is
        closed. Raises NotConfigured at once when the client has no credential for the agent."""
        self.client._agent_token(self.id)
        return KeepAlive(self.client, self.id, interval, self._owners())._start()

    def rotate_credential(self) -> p.AgentCredential:
        """Give the agent a new credential (with the client's admin or enroll key);
        this handle acts with it from now on."""
        return self.client.rotate_credential(self.id)

    def lease(self, contact: str, duration: Duration | None = None, intent: str | None = None) -> LeaseHandle:
        """A lease on ``contact``, taken on entering ``with`` (or by ``acquire()``) and renewed until released."""
        return LeaseHandle(self.client, self.id, contact, duration, intent, self._owners())

    def send_check(self, contact: str, fencing_token: int | None = None) -> p.SendCheck:
        return self.client.send_check(self.id, contact, fencing_token)

    def suppress(self, entry: str, reason: p.SuppressionReason, note: str | None = None) -> p.Suppression:
        """Suppress ``entry`` as this agent, with its own credential (it read "unsubscribe
        me"): as Concord.suppress, but an existing suppression is found as it stands."""
        return self.client._run(_Wire.suppress(entry, reason, note, self.id))

    def import_suppressions(self, items: Iterable[p.SuppressionItem | Mapping[str, Any]]) -> p.SuppressionImport:
        """As Concord.import_suppressions, as this agent, with its own credential."""
        return self.client._run(_Wire.import_suppressions(items, self.id))

    def request_consensus(
        self,
        action: str,
        contact: str | None = None,
        reason: str | None = None,
        timeout: Duration | None = None,
        idempotency_key: str | None = None,
    ) -> ConsensusHandle:
        return self.client.request_consensus(self.id, action, contact, reason, timeout, idempotency_key)

    def vote(self, consensus: str | ConsensusHandle, vote: VoteChoice, reason: str | None = None) -> p.Consensus:
        return self.client.vote(_consensus_id(consensus), self.id, vote, reason)

    def remove(self) -> p.AgentRemoved:
        """Stop this handle's background work, then deregister the agent (its leases are released)."""
        self.close()
        return self.client.remove_agent(self.id)

    def close(self) -> None:
        for worker in list(self._background):
            worker._halt()

    def __enter__(self) -> AgentHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KeepAlive(_KeepAliveBase):
    """Heartbeats one agent from a daemon thread: at once, then every ``interval`` s.

    ``last`` is the last Heartbeat answered, ``error`` the error of the last failed
    one (None once a heartbeat succeeds again). A failure is logged and tried again
    next interval, except AgentNotFound: the agent is gone, and the thread ends."""

    client: Concord

    def __init__(self, client: Concord, agent_id: str, interval: float, owners: tuple[set[Any], ...]) -> None:
        super().__init__(client, agent_id, interval, owners)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"concord-keep-alive-{agent_id}", daemon=True)

    def _start(self) -> KeepAlive:
        self._track()
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _beat(self) -> None:
        while True:
            sent_with = self._sent_with()
            try:
                self.last, self.error = self.client.heartbeat(self.agent_id), None
            except ConcordError as exc:
                if not self._beat_failed(exc, sent_with):
                    return
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        """Stop heartbeating; returns once the thread has ended (a heartbeat in flight completes first)."""
        self._halt()

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join()
        self._untrack()

    def __enter__(self) -> KeepAlive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LeaseHandle(_LeaseHandleBase):
    """A lease on one contact, held by one agent, renewed in the background while held.

    ``with agent.lease(contact) as lease:`` acquires (LeaseConflict, with ``holder``,
    when another agent holds the contact), renews on a daemon thread whenever a
    third of the duration is left (with the same duration), and releases on leaving
    the block, whether it ends normally or raises. A renewal refused for good (the
    lease expired, was taken over or released, its agent is inactive or removed)
    marks the lease lost: ``lost`` holds the LeaseLost, ``check()`` raises it, and
    leaving the block raises it unless the block is raising already. A renewal that
    gets no answer, 429 or 5xx is tried again until the lease's own expiry."""

    client: Concord

    def __init__(
        self,
        client: Concord,
        agent_id: str,
        contact: str,
        duration: Duration | None,
        intent: str | None,
        owners: tuple[set[Any], ...],
    ) -> None:
        super().__init__(client, agent_id, contact, duration, intent, owners)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> p.Lease:
        """Take the lease and start renewing it."""
        if self._thread is not None:
            raise RuntimeError(f"the lease on {self.contact} is already held")
        sent = time.monotonic()
        lease = self.client.acquire_lease(self.agent_id, self.contact, self.duration, self.intent)
        plan = self._acquired(lease, sent)
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, args=(plan,), name=f"concord-lease-{lease.id}", daemon=True)
        self._track()
        self._thread.start()
        return lease

    def _renew(self, plan: _Renewal) -> None:
        while not self._stop.wait(plan.wait()):
            lease, sent, sent_with = self._held(), time.monotonic(), self._sent_with()
            try:
                self.lease = self.client.renew_lease(lease.id, self.agent_id, self.duration)
            except ConcordError as exc:
                if self._renewal_failed(lease, exc, plan, sent_with):
                    return
            else:
                plan.renewed(sent)

    def release(self) -> p.Released | None:
        """Stop renewing and release the lease (None if it was never acquired)."""
        self._halt()
        if self.lease is not None and self.released is None:
            self.released = self.client.release_lease(self.lease.id, self.agent_id)
        return self.released

    def _halt(self) -> None:
        """Stop renewing (a renewal in flight completes first)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._untrack()

    def __enter__(self) -> LeaseHandle:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        release_error = None
        try:
            self.release()
        except ConcordError as error:
            release_error = error
        self._leave(exc, release_error)


class ConsensusHandle(_ConsensusHandleBase):
    """One consensus request: ``id``, ``info`` (the schemas.Consensus last read, or
    None), ``refresh()`` and ``wait(timeout)``."""

    client: Concord

    def refresh(self) -> p.Consensus:
        self.info = self.client.get_consensus(self.id)
        return self.info

    def wait(self, timeout: Duration | None = None) -> p.Consensus:
        """Block until the request is decided, or ``timeout`` passes (then it is still pending)."""
        self.info = self.client.wait_consensus(self.id, timeout)
        return self.info
