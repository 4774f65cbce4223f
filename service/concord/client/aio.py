"""The asyncio client: `AsyncConcord` and its handles, the methods of `Concord`
(sync.py) as coroutines; background work (keep-alive heartbeats, lease renewal)
runs as tasks on the running loop, and closing the client or the handle that
started them cancels them and waits for them to end.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterable, Mapping
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

__all__ = ["AsyncAgentHandle", "AsyncConcord", "AsyncConsensusHandle", "AsyncKeepAlive", "AsyncLeaseHandle"]


class AsyncConcord(_ClientBase):
    """The asyncio client: the methods of Concord, as coroutines; background work
    runs as tasks on the running loop. ``http`` is an httpx.AsyncClient (left open
    on close) or an httpx async transport."""

    _HTTP, _TRANSPORT = httpx.AsyncClient, httpx.AsyncBaseTransport
    _http: httpx.AsyncClient
    _background: set[AsyncKeepAlive | AsyncLeaseHandle]

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        agent_credential: str | None = None,
        http: httpx.AsyncClient | httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.1,
        stream_timeout: float = 60.0,
    ) -> None:
        super().__init__(url, api_key, agent_credential, http, timeout, max_retries, backoff, stream_timeout)

    async def aclose(self) -> None:
        """Stop every keep-alive and lease renewal started from this client, then close its connections."""
        for worker in list(self._background):
            await worker._halt()
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncConcord:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, call: _Call) -> Any:
        request = self._request(call)  # the same on every attempt; NotConfigured raises before any
        for attempt in itertools.count():
            try:
                return self._answer(call, await self._http.request(**request))
            except (httpx.TransportError, ConcordError) as exc:
                delay = self._retry_delay(call, exc, attempt)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # Each method: as the method of the same name on Concord.

    async def register(
        self, name: str, role: str | None = None, metadata: dict[str, Any] | None = None, kind: str | None = None
    ) -> AsyncAgentHandle:
        return AsyncAgentHandle(self, self._registered(await self._run(_Wire.register(name, role, metadata, kind))))

    def agent(self, agent_id: str, credential: str | None = None) -> AsyncAgentHandle:
        if credential is not None:
            self._remember(credential, "credential", agent_id)
        return AsyncAgentHandle(self, agent_id)

    def me(self) -> AsyncAgentHandle:
        return AsyncAgentHandle(self, self._own_agent())

    async def rotate_credential(self, agent_id: str) -> p.AgentCredential:
        return self._rotated(await self._run(_Wire.rotate_credential(agent_id)))

    async def heartbeat(self, agent_id: str) -> p.Heartbeat:
        return await self._run(_Wire.heartbeat(agent_id))

    async def get_agent(self, agent_id: str) -> p.Agent:
        return await self._run(_Wire.get_agent(agent_id))

    async def list_agents(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> p.AgentList:
        return await self._run(_Wire.list_agents(status, limit, cursor))

    async def remove_agent(self, agent_id: str) -> p.AgentRemoved:
        return await self._run(_Wire.remove_agent(agent_id))

    async def acquire_lease(
        self, agent_id: str, contact: str, duration: Duration | None = None, intent: str | None = None
    ) -> p.Lease:
        return await self._run(_Wire.acquire_lease(agent_id, contact, duration, intent))

    async def renew_lease(self, lease_id: str, agent_id: str, duration: Duration | None = None) -> p.Lease:
        return await self._run(_Wire.renew_lease(lease_id, agent_id, duration))

    async def release_lease(self, lease_id: str, agent_id: str | None = None, *, force: bool = False) -> p.Released:
        return await self._run(_Wire.release_lease(lease_id, agent_id, force))

    async def get_lease(self, lease_id: str) -> p.Lease:
        return await self._run(_Wire.get_lease(lease_id))

    async def list_leases(
        self,
        agent_id: str | None = None,
        contact: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> p.LeaseList:
        return await self._run(_Wire.list_leases(agent_id, contact, limit, cursor))

    async def send_check(self, agent_id: str, contact: str, fencing_token: int | None = None) -> p.SendCheck:
        return await self._run(_Wire.send_check(agent_id, contact, fencing_token))

    async def suppress(self, entry: str, reason: p.SuppressionReason, note: str | None = None) -> p.Suppression:
        return await self._run(_Wire.suppress(entry, reason, note, None))

    async def import_suppressions(self, items: Iterable[p.SuppressionItem | Mapping[str, Any]]) -> p.SuppressionImport:
        return await self._run(_Wire.import_suppressions(items, None))

    async def get_suppression(self, entry: str) -> p.Suppression:
        return await self._run(_Wire.get_suppression(entry))

    async def list_suppressions(self, limit: int | None = None, cursor: str | None = None) -> p.SuppressionList:
        return await self._run(_Wire.list_suppressions(limit, cursor))

    async def lift_suppression(self, entry: str) -> p.Suppression:
        return await self._run(_Wire.lift_suppression(entry))

    async def request_consensus(
        self,
        agent_id: str,
        action: str,
        contact: str | None = None,
        reason: str | None = None,
        timeout: Duration | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncConsensusHandle:
        call = _Wire.request_consensus(agent_id, action, contact, reason, timeout, idempotency_key)
        return AsyncConsensusHandle(self, await self._run(call))

    def consensus(self, consensus_id: str) -> AsyncConsensusHandle:
        return AsyncConsensusHandle(self, consensus_id)

    async def vote(self, consensus_id: str, agent_id: str, vote: VoteChoice, reason: str | None = None) -> p.Consensus:
        return await self._run(_Wire.vote(consensus_id, agent_id, vote, reason))

    async def get_consensus(self, consensus_id: str, wait: Duration | None = None) -> p.Consensus:
        return await self._run(_Wire.get_consensus(consensus_id, wait))

    async def list_consensus(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> p.ConsensusList:
        return await self._run(_Wire.list_consensus(status, limit, cursor))

    async def wait_consensus(self, consensus_id: str, timeout: Duration | None = None) -> p.Consensus:
        for wait in _long_polls(timeout):
            consensus = await self.get_consensus(consensus_id, wait=wait)
            if consensus.status != "pending":
                break
        return consensus

    async def events(
        self,
        after: str | int | None = None,
        limit: int | None = None,
        types: str | list[str] | None = None,
        agent_id: str | None = None,
        contact: str | None = None,
    ) -> p.EventPage:
        return await self._run(_Wire.events(after, limit, types, agent_id, contact))

    async def stream_events(
        self,
        last_event_id: str | None = None,
        types: str | list[str] | None = None,
        agent_id: str | None = None,
        contact: str | None = None,
    ) -> AsyncIterator[p.Event]:
        """As Concord.stream_events. Close it when done (``contextlib.aclosing``), so
        the connection closes then rather than when the generator is collected."""
        stream = _EventStream(self, _Wire.event_stream(types, agent_id, contact), last_event_id)
        while True:
            try:
                async with self._http.stream(**stream.connect()) as response:
                    if not response.is_success:
                        await response.aread()
                        raise error_from_response(response)
                    async for chunk in response.aiter_bytes():
                        for event in stream.feed(chunk):
                            yield event
                delay = stream.reconnect_delay(None)
            except (httpx.TransportError, ConcordError) as exc:
                delay = stream.reconnect_delay(exc)
                if delay is None:
                    raise
            await asyncio.sleep(delay)


class AsyncAgentHandle(_AgentHandleBase):
    """As AgentHandle, for AsyncConcord; ``aclose()`` stops its background tasks."""

    client: AsyncConcord
    _background: set[AsyncKeepAlive | AsyncLeaseHandle]

    async def refresh(self) -> p.Agent:
        self.info = await self.client.get_agent(self.id)
        return self.info

    async def heartbeat(self) -> p.Heartbeat:
        return await self.client.heartbeat(self.id)

    def keep_alive(self, interval: float = 60.0) -> AsyncKeepAlive:
        """Heartbeat now and then every ``interval`` seconds in a task on the running
        loop, until the returned AsyncKeepAlive (also an async context manager), this
        handle or the client is closed. Raises NotConfigured at once when the client
        has no credential for the agent."""
        self.client._agent_token(self.id)
        return AsyncKeepAlive(self.client, self.id, interval, self._owners())._start()

    async def rotate_credential(self) -> p.AgentCredential:
        return await self.client.rotate_credential(self.id)

    def lease(self, contact: str, duration: Duration | None = None, intent: str | None = None) -> AsyncLeaseHandle:
        return AsyncLeaseHandle(self.client, self.id, contact, duration, intent, self._owners())

    async def send_check(self, contact: str, fencing_token: int | None = None) -> p.SendCheck:
        return await self.client.send_check(self.id, contact, fencing_token)

    async def suppress(self, entry: str, reason: p.SuppressionReason, note: str | None = None) -> p.Suppression:
        return await self.client._run(_Wire.suppress(entry, reason, note, self.id))

    async def import_suppressions(self, items: Iterable[p.SuppressionItem | Mapping[str, Any]]) -> p.SuppressionImport:
        return await self.client._run(_Wire.import_suppressions(items, self.id))

    async def request_consensus(
        self,
        action: str,
        contact: str | None = None,
        reason: str | None = None,
        timeout: Duration | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncConsensusHandle:
        return await self.client.request_consensus(self.id, action, contact, reason, timeout, idempotency_key)

    async def vote(
        self, consensus: str | AsyncConsensusHandle, vote: VoteChoice, reason: str | None = None
    ) -> p.Consensus:
        return await self.client.vote(_consensus_id(consensus), self.id, vote, reason)

    async def remove(self) -> p.AgentRemoved:
        await self.aclose()
        return await self.client.remove_agent(self.id)

    async def aclose(self) -> None:
        for worker in list(self._background):
            await worker._halt()

    async def __aenter__(self) -> AsyncAgentHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it to end; a crash in it is raised here. The
    caller's own cancellation still propagates (asyncio.wait does not swallow it)."""
    if task is None or task is asyncio.current_task():
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


class AsyncKeepAlive(_KeepAliveBase):
    """As KeepAlive, as a task on the running loop."""

    client: AsyncConcord

    def __init__(self, client: AsyncConcord, agent_id: str, interval: float, owners: tuple[set[Any], ...]) -> None:
        super().__init__(client, agent_id, interval, owners)
        self._task: asyncio.Task[None] | None = None

    def _start(self) -> AsyncKeepAlive:
        self._task = asyncio.get_running_loop().create_task(self._beat(), name=f"concord-keep-alive-{self.agent_id}")
        self._track()
        return self

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _beat(self) -> None:
        while True:
            sent_with = self._sent_with()
            try:
                self.last, self.error = await self.client.heartbeat(self.agent_id), None
            except ConcordError as exc:
                if not self._beat_failed(exc, sent_with):
                    return
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        """Stop heartbeating; returns once the task has ended (a heartbeat in flight is cancelled)."""
        await self._halt()

    async def _halt(self) -> None:
        self._untrack()
        await _cancel(self._task)

    async def __aenter__(self) -> AsyncKeepAlive:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class AsyncLeaseHandle(_LeaseHandleBase):
    """As LeaseHandle, renewing in a task: ``async with agent.lease(contact) as lease:``."""

    client: AsyncConcord

    def __init__(
        self,
        client: AsyncConcord,
        agent_id: str,
        contact: str,
        duration: Duration | None,
        intent: str | None,
        owners: tuple[set[Any], ...],
    ) -> None:
        super().__init__(client, agent_id, contact, duration, intent, owners)
        self._task: asyncio.Task[None] | None = None

    async def acquire(self) -> p.Lease:
        if self._task is not None:
            raise RuntimeError(f"the lease on {self.contact} is already held")
        sent = time.monotonic()
        lease = await self.client.acquire_lease(self.agent_id, self.contact, self.duration, self.intent)
        plan = self._acquired(lease, sent)
        self._task = asyncio.get_running_loop().create_task(self._renew(plan), name=f"concord-lease-{lease.id}")
        self._track()
        return lease

    async def _renew(self, plan: _Renewal) -> None:
        while True:
            await asyncio.sleep(plan.wait())
            lease, sent, sent_with = self._held(), time.monotonic(), self._sent_with()
            try:
                self.lease = await self.client.renew_lease(lease.id, self.agent_id, self.duration)
            except ConcordError as exc:
                if self._renewal_failed(lease, exc, plan, sent_with):
                    return
            else:
                plan.renewed(sent)

    async def release(self) -> p.Released | None:
        await self._halt()
        if self.lease is not None and self.released is None:
            self.released = await self.client.release_lease(self.lease.id, self.agent_id)
        return self.released

    async def _halt(self) -> None:
        task, self._task = self._task, None
        self._untrack()
        await _cancel(task)

    async def __aenter__(self) -> AsyncLeaseHandle:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        release_error = None
        try:
            await self.release()
        except ConcordError as error:
            release_error = error
        self._leave(exc, release_error)


class AsyncConsensusHandle(_ConsensusHandleBase):
    """As ConsensusHandle, for AsyncConcord."""

    client: AsyncConcord

    async def refresh(self) -> p.Consensus:
        self.info = await self.client.get_consensus(self.id)
        return self.info

    async def wait(self, timeout: Duration | None = None) -> p.Consensus:
        self.info = await self.client.wait_consensus(self.id, timeout)
        return self.info
