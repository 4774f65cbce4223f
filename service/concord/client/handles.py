"""What the sync and async handles share (agent, keep-alive, lease and consensus).

Each base holds a handle's state and every part that sends nothing; the classes
in sync.py and aio.py add the sending, and run background work on a thread or a
task. Background work (keep-alive heartbeats, lease renewal) belongs to the client
and to the agent handle that started it: closing either stops it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import msgspec

from concord import protocol as p
from concord.client.base import MAX_BACKOFF
from concord.client.calls import Duration, whole_seconds
from concord.client.errors import (
    AgentNotFound,
    ConcordError,
    CredentialRefused,
    LeaseLost,
    LeaseNotFound,
    NotConfigured,
    _transient,
)

# The server's lease duration when none is given: the renewal schedule needs it.
DEFAULT_LEASE_SECONDS = p.DEFAULT_LEASE_MS / 1000

log = logging.getLogger("concord.client")


class _Renewal:
    """When to renew a lease, and until when it surely holds, on this process's
    monotonic clock. A grant counts from when its request was sent, so the local
    expiry is never later than the service's."""

    def __init__(self, duration: int | None, sent: float) -> None:
        self.seconds = duration if duration is not None else DEFAULT_LEASE_SECONDS
        self.renewed(sent)

    def renewed(self, sent: float) -> None:
        self.expires = sent + self.seconds
        self.due = sent + self.seconds * 2 / 3  # renew with a third of the duration left
        self.failures = 0

    def wait(self) -> float:
        return max(0.0, self.due - time.monotonic())

    def failed(self, error: ConcordError) -> bool:
        """Record a failed renewal; True when the lease is lost. A transient failure
        is tried again, with backoff, for as long as the lease still holds."""
        if not _transient(error):
            return True
        delay = min(MAX_BACKOFF, 0.2 * 2**self.failures)
        self.failures += 1
        now = time.monotonic()
        if now + delay >= self.expires:
            return True
        self.due = now + delay
        return False


class _Tracked:
    """Background work registered with the client and the handle that started it,
    so that closing either stops it."""

    def __init__(self, owners: tuple[set[Any], ...]) -> None:
        self._owners = owners

    def _track(self) -> None:
        for owner in self._owners:
            owner.add(self)

    def _untrack(self) -> None:
        for owner in self._owners:
            owner.discard(self)


class _AgentHandleBase:
    """An agent handle's state. The background work started from the handle is in
    ``_background`` (and in its client's), so that closing either stops it. Its
    credential is kept by the client (``credential``), so every handle of the agent
    and the client's own calls use the newest one, rotated or registered again."""

    def __init__(self, client: Any, agent: p.Agent | str) -> None:
        self.client = client
        self.info = agent if isinstance(agent, p.Agent) else None
        self.id = agent.id if isinstance(agent, p.Agent) else agent
        self._background: set[Any] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    @property
    def credential(self) -> str | None:
        """The agent's credential, the newest its client knows (from registering it,
        rotating it, or given); None when the client has none (acting then raises
        NotConfigured). A secret: never log it."""
        return self.client._credential_of(self.id)

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The agent's metadata, decoded (``info.metadata`` is the raw JSON)."""
        return msgspec.json.decode(self.info.metadata) if self.info is not None else None

    def _owners(self) -> tuple[set[Any], ...]:
        """Who owns background work started from this handle."""
        return (self.client._background, self._background)


class _KeepAliveBase(_Tracked):
    """A keep-alive's state and what it makes of each heartbeat's outcome."""

    def __init__(self, client: Any, agent_id: str, interval: float, owners: tuple[set[Any], ...]) -> None:
        if not 0 < interval < math.inf:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        super().__init__(owners)
        self.client, self.agent_id, self.interval = client, agent_id, interval
        self.last: p.Heartbeat | None = None
        self.error: ConcordError | None = None

    def _sent_with(self) -> str | None:
        """The credential the next heartbeat goes with."""
        return self.client._acting_credential(self.agent_id)

    def _beat_failed(self, error: ConcordError, sent_with: str | None) -> bool:
        """Record a failed heartbeat, sent with ``sent_with``; True to try again next
        interval, False when no heartbeat can succeed and the keep-alive ends: the
        agent is gone, or its credential is refused (rotated elsewhere, or the agent
        deregistered) and the client knows no newer one."""
        self.error = error
        refused = isinstance(error, CredentialRefused) and self._sent_with() == sent_with
        if refused or isinstance(error, (AgentNotFound, NotConfigured)):
            log.warning("keep-alive of %s stops: %s", self.agent_id, error)
            return False
        log.warning("keep-alive of %s: heartbeat failed, next try in %s s: %s", self.agent_id, self.interval, error)
        return True


class _LeaseHandleBase(_Tracked):
    """A lease handle's state, its view of the lease, and the bookkeeping of
    acquiring, renewing and leaving the block. ``lease`` is the last grant; a
    renewal found refused for good sets ``lost``, and renewing ends."""

    def __init__(
        self,
        client: Any,
        agent_id: str,
        contact: str,
        duration: Duration | None,
        intent: str | None,
        owners: tuple[set[Any], ...],
    ) -> None:
        super().__init__(owners)
        self.client, self.agent_id, self.contact, self.intent = client, agent_id, contact, intent
        self.duration = whole_seconds(duration, "duration")  # None: the service's default
        self.lease: p.Lease | None = None
        self.lost: LeaseLost | None = None
        self.released: p.Released | None = None

    def __repr__(self) -> str:
        lease_id = self.lease.id if self.lease else None
        return f"{type(self).__name__}({self.contact!r}, agent={self.agent_id!r}, lease={lease_id})"

    def _held(self) -> p.Lease:
        if self.lease is None:
            raise RuntimeError(f"the lease on {self.contact} has not been acquired")
        return self.lease

    @property
    def id(self) -> str:
        return self._held().id

    @property
    def fencing_token(self) -> int:
        return self._held().fencing_token

    @property
    def expires_at(self) -> str:
        """The expiry the service last granted (ISO-8601, Redis's clock)."""
        return self._held().expires_at

    def check(self) -> None:
        """Raise LeaseLost if a renewal found the lease gone."""
        if self.lost is not None:
            raise self.lost

    def _acquired(self, lease: p.Lease, sent: float) -> _Renewal:
        """Record the grant of acquire(), whose request was sent at ``sent``
        (monotonic), and plan its renewals."""
        self.lease, self.contact, self.lost, self.released = lease, lease.contact_email, None, None
        return _Renewal(self.duration, sent)

    def _sent_with(self) -> str | None:
        """The credential the next renewal goes with."""
        return self.client._acting_credential(self.agent_id)

    def _renewal_failed(self, lease: p.Lease, error: ConcordError, plan: _Renewal, sent_with: str | None) -> bool:
        """Record a failed renewal of ``lease``, sent with ``sent_with``; True when the
        lease is lost and renewing ends. A credential refused because it was rotated
        while the renewal was in flight is no loss: the next goes with the new one."""
        if isinstance(error, CredentialRefused) and self._sent_with() != sent_with:
            plan.due = time.monotonic()
            log.info("renewing lease %s with the agent's rotated credential", lease.id)
            return False
        if plan.failed(error):
            self.lost = LeaseLost(lease, error, expired=_transient(error))
            log.warning("%s", self.lost)
            return True
        log.info("renewing lease %s failed, trying again: %s", lease.id, error)
        return False

    def _leave(self, raising: BaseException | None, release_error: ConcordError | None) -> None:
        """What leaving the lease block raises, once released: the block's own
        exception first (with notes on what else went wrong), then a lost lease,
        then a failed release. A lease already gone (lease_not_found) is no failure."""
        if isinstance(release_error, LeaseNotFound):
            release_error = None  # nothing was left to release
        lost = self.lost
        if raising is not None:
            if lost is not None and raising is not lost:
                raising.add_note(f"meanwhile: {lost}")
            if release_error is not None:
                raising.add_note(f"and releasing it failed: {release_error}")
            return
        if lost is not None:
            if release_error is not None:
                lost.add_note(f"and releasing it failed: {release_error}")
            raise lost
        if release_error is not None:
            raise release_error


class _ConsensusHandleBase:
    """A consensus handle's state: ``id`` and ``info``, the Consensus last read."""

    def __init__(self, client: Any, consensus: p.Consensus | str) -> None:
        self.client = client
        self.info = consensus if isinstance(consensus, p.Consensus) else None
        self.id = consensus.id if isinstance(consensus, p.Consensus) else consensus

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, status={self.status!r})"

    @property
    def status(self) -> str | None:
        return self.info.status if self.info is not None else None


def _consensus_id(consensus: str | _ConsensusHandleBase) -> str:
    return consensus.id if isinstance(consensus, _ConsensusHandleBase) else consensus
