"""A history of lease answers, and a checker that proves Concord's lease promises on it.

The recorder side is plain data: a contention run appends one event per answer it
got from the service. The checker is a pure function of that data (no I/O, no
clock), so it can be tested on small hand-made histories, including broken ones.

Events (all server times are Unix milliseconds of Redis's clock, as the API's
ISO-8601 times say; client times are the local wall clock, in milliseconds):

- ``Grant``      a 201 from ``POST /lease``: a new lease with its holder, fencing
                 token, acquiredAt and expiresAt.
- ``Extension``  a 200 from ``POST /lease/{id}/renew``, or a 200 from ``POST /lease``
                 by the holder (same lease id): the lease's new expiresAt. ``at`` is
                 when the server applied it (expiresAt - the duration asked for).
- ``Release``    a 200 from ``DELETE /lease/{id}``: releasedAt.
- ``Conflict``   a 409 ``lease_conflict``: the holder the answer named (agentId and
                 expiresAt of its ``leaseHolder``) and when the request was in flight.

What ``check`` proves, and why each rule is exact:

(a) No two grants of one contact overlap. A grant lives over [acquiredAt, end],
    end = releasedAt if released, else its last expiresAt. Redis drops a key only
    once its clock is strictly past the key's expiry, and a script reads TIME no
    earlier than the instant at which it sees keys, so a later grant must have
    acquiredAt > the earlier expiresAt; after a release, acquiredAt >= releasedAt
    (a later script cannot read an earlier time than an earlier script).
(b) Fencing tokens follow grant order: for grants a, b of one tenant with
    acquiredAt_a < acquiredAt_b, token_a < token_b; no token twice; and no token
    below Redis's time in microseconds at its grant (token >= acquiredAt * 1000).
(c) Every conflict named the holder of the time: its (agentId, expiresAt) is a state
    some recorded grant or extension of that contact put in place, and that state was
    current (from when it was set until it was replaced, released or expired) at some
    moment while the request was in flight. The flight is measured on the client's
    clock and the state on Redis's: on one host they are the same clock, and
    ``tolerance_ms`` (default 50) absorbs rounding and scheduling. That premise is
    itself checked: every answer that carries a server time (grant, extension,
    release) with client times must fall inside its own flight window, within the
    tolerance, or the history reports a ``clock`` violation.

Beyond the promises, the checker also rejects histories that cannot be true:
extensions or releases of a lease never granted, a lease id granted twice, an
extension by another agent or with another token, a release recorded twice, or an
extension applied after the release. These would otherwise make the lifetimes above
meaningless.

The checker assumes the holders stay active: a takeover of an inactive holder's
lease (a 201 while that lease has not expired) is reported as an overlap, which is
right for a run that keeps every agent heartbeating.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TOLERANCE_MS = 50.0


@dataclass(frozen=True, slots=True)
class Grant:
    contact: str
    lease_id: str
    agent_id: str
    fencing_token: int
    acquired_at: int
    expires_at: int
    tenant: str = ""
    process: str = ""
    sent_ms: float | None = None
    answered_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Extension:
    lease_id: str
    expires_at: int
    at: int | None = None  # server time the extension was applied; None if unknown
    agent_id: str | None = None  # as the answer named them, to cross-check the grant
    fencing_token: int | None = None
    process: str = ""
    sent_ms: float | None = None
    answered_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Release:
    lease_id: str
    released_at: int
    process: str = ""
    sent_ms: float | None = None
    answered_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Conflict:
    contact: str
    holder_id: str
    holder_expires_at: int
    sent_ms: float
    answered_ms: float
    agent_id: str | None = None  # who asked; a conflict must never name the asker
    tenant: str = ""
    process: str = ""


@dataclass
class History:
    """Everything a run was answered, in the order the answers arrived."""

    grants: list[Grant] = field(default_factory=list)
    extensions: list[Extension] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    # Client wall time when recording stopped: leases not released whose expiresAt
    # is later were still held, not expired. None counts every one as expired.
    finished_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    detail: str
    events: tuple[Any, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detail": self.detail,
            "events": [dict(type=type(e).__name__, **dataclasses.asdict(e)) for e in self.events],
        }


@dataclass
class Report:
    grants: int
    extensions: int
    releases: int
    expiries: int  # grants that ended by expiry (not released)
    still_held: int  # grants neither released nor expired when recording stopped
    conflicts: int
    contacts: int  # contacts with at least one grant
    contested_contacts: int  # contacts with at least one conflict as well
    processes: int  # distinct service processes that answered
    tolerance_ms: float
    clock_checked: int  # answers whose server time was compared with their flight window
    clock_max_outside_ms: float  # how far the worst of them fell outside it (0: none did)
    violations: list[Violation]

    @property
    def ok(self) -> bool:
        return not self.violations

    def violation_counts(self) -> dict[str, int]:
        return dict(Counter(v.kind for v in self.violations))

    def as_dict(self, max_violations: int = 200) -> dict[str, Any]:
        figures = {_camel(f.name): getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "violations"}
        return {
            **figures,
            "violations": len(self.violations),
            "violationKinds": self.violation_counts(),
            "violationDetails": [v.as_dict() for v in self.violations[:max_violations]],
        }

    def summary(self, max_violations: int = 20) -> str:
        lines = [
            (
                f"grants {self.grants}, extensions {self.extensions}, releases {self.releases}, "
                f"expiries {self.expiries}, still held {self.still_held}"
            ),
            (
                f"conflicts {self.conflicts}, contacts {self.contacts} ({self.contested_contacts} contested), "
                f"processes {self.processes}"
            ),
            (
                f"clock: {self.clock_checked} answers checked against their flight window, worst "
                f"{self.clock_max_outside_ms:.1f} ms outside (tolerance {self.tolerance_ms:g} ms)"
            ),
            f"violations {len(self.violations)} {self.violation_counts() or ''}".rstrip(),
        ]
        lines += [f"  {v.kind}: {v.detail}" for v in self.violations[:max_violations]]
        if len(self.violations) > max_violations:
            lines.append(f"  ... and {len(self.violations) - max_violations} more")
        return "\n".join(lines)


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


@dataclass
class _Lease:
    """One grant with what happened to it afterwards, in server order."""

    grant: Grant
    extensions: list[Extension] = field(default_factory=list)
    release: Release | None = None

    def states(self) -> list[tuple[int, int, Grant | Extension]]:
        """(start, expiresAt, event) of each expiry the lease had, in the order applied.

        Extensions are ordered by their server time when every one has it, otherwise
        by arrival (one holder extends its lease one request at a time)."""
        exts = self.extensions
        if all(e.at is not None for e in exts):
            exts = sorted(exts, key=lambda e: e.at)  # type: ignore[arg-type, return-value]
        g = self.grant
        return [(g.acquired_at, g.expires_at, g)] + [
            (e.at if e.at is not None else g.acquired_at, e.expires_at, e) for e in exts
        ]

    @property
    def last_expires_at(self) -> int:
        return self.states()[-1][1]

    @property
    def end(self) -> int:
        return self.release.released_at if self.release else self.last_expires_at


def check(history: History, tolerance_ms: float = DEFAULT_TOLERANCE_MS) -> Report:
    """Check ``history`` against rules (a), (b), (c) of the module docstring; pure."""
    violations: list[Violation] = []
    leases = _leases(history, violations)
    _check_overlaps(leases, violations)
    _check_tokens(history.grants, violations)
    _check_conflicts(history.conflicts, leases, tolerance_ms, violations)
    clock_checked, clock_worst = _check_clock(history, tolerance_ms, violations)

    unreleased = [lease for lease in leases.values() if lease.release is None]
    if history.finished_ms is None:
        expiries = len(unreleased)
    else:
        expiries = sum(lease.last_expires_at < history.finished_ms for lease in unreleased)
    contacts = {(g.tenant, g.contact) for g in history.grants}
    conflicted = {(c.tenant, c.contact) for c in history.conflicts}
    events: list[Any] = [*history.grants, *history.extensions, *history.releases, *history.conflicts]
    return Report(
        grants=len(history.grants),
        extensions=len(history.extensions),
        releases=len(history.releases),
        expiries=expiries,
        still_held=len(unreleased) - expiries,
        conflicts=len(history.conflicts),
        contacts=len(contacts),
        contested_contacts=len(contacts & conflicted),
        processes=len({e.process for e in events if e.process}),
        tolerance_ms=tolerance_ms,
        clock_checked=clock_checked,
        clock_max_outside_ms=clock_worst,
        violations=violations,
    )


def _leases(history: History, violations: list[Violation]) -> dict[str, _Lease]:
    """Each granted lease id with its extensions and release; impossible events are violations."""
    leases: dict[str, _Lease] = {}
    for g in history.grants:
        if g.lease_id in leases:
            first = leases[g.lease_id].grant
            violations.append(Violation("duplicate_lease_id", f"lease {g.lease_id} was granted twice", (first, g)))
            continue
        leases[g.lease_id] = _Lease(g)
    for e in history.extensions:
        lease = leases.get(e.lease_id)
        if lease is None:
            violations.append(Violation("unknown_lease", f"extension of lease {e.lease_id}, never granted", (e,)))
            continue
        g = lease.grant
        wrong = []
        if e.agent_id is not None and e.agent_id != g.agent_id:
            wrong.append(f"holder {e.agent_id}, granted to {g.agent_id}")
        if e.fencing_token is not None and e.fencing_token != g.fencing_token:
            wrong.append(f"token {e.fencing_token}, granted with {g.fencing_token}")
        if e.at is not None and e.at < g.acquired_at:
            wrong.append(f"applied at {e.at}, before its grant at {g.acquired_at}")
        if wrong:
            violations.append(
                Violation("inconsistent_lease", f"extension of lease {e.lease_id}: " + "; ".join(wrong), (g, e))
            )
        lease.extensions.append(e)
    for r in history.releases:
        lease = leases.get(r.lease_id)
        if lease is None:
            violations.append(Violation("unknown_lease", f"release of lease {r.lease_id}, never granted", (r,)))
            continue
        g = lease.grant
        if lease.release is not None:
            violations.append(
                Violation("inconsistent_lease", f"lease {r.lease_id} released twice", (g, lease.release, r))
            )
            continue
        if r.released_at < g.acquired_at:
            violations.append(
                Violation(
                    "inconsistent_lease",
                    f"lease {r.lease_id} released at {r.released_at}, before its grant at {g.acquired_at}",
                    (g, r),
                )
            )
        lease.release = r
    for lease in leases.values():
        r = lease.release
        if r is None:
            continue
        for e in lease.extensions:
            if e.at is not None and e.at > r.released_at:
                violations.append(
                    Violation(
                        "inconsistent_lease",
                        f"lease {r.lease_id} extended at {e.at}, after its release at {r.released_at}",
                        (lease.grant, r, e),
                    )
                )
    return leases


def _check_overlaps(leases: dict[str, _Lease], violations: list[Violation]) -> None:
    """(a): per contact, in grant order, no grant while an earlier lease is still alive."""
    by_contact: dict[tuple[str, str], list[_Lease]] = defaultdict(list)
    for lease in leases.values():
        by_contact[(lease.grant.tenant, lease.grant.contact)].append(lease)
    for (_, contact), group in by_contact.items():
        group.sort(key=lambda lease: (lease.grant.acquired_at, lease.grant.fencing_token))
        alive: list[_Lease] = []  # earlier leases that may still block later grants
        for lease in group:
            g = lease.grant
            still: list[_Lease] = []
            for earlier in alive:
                p = earlier.grant
                if earlier.release is not None:
                    if g.acquired_at < earlier.release.released_at:
                        violations.append(
                            Violation(
                                "overlap_release",
                                f"{contact}: lease {g.lease_id} (agent {g.agent_id}) granted at {g.acquired_at}, "
                                f"before lease {p.lease_id} (agent {p.agent_id}, granted at {p.acquired_at}) "
                                f"was released at {earlier.release.released_at}",
                                (p, *earlier.extensions, earlier.release, g),
                            )
                        )
                        still.append(earlier)
                elif g.acquired_at <= earlier.last_expires_at:
                    violations.append(
                        Violation(
                            "overlap_expiry",
                            f"{contact}: lease {g.lease_id} (agent {g.agent_id}) granted at {g.acquired_at}, "
                            f"while lease {p.lease_id} (agent {p.agent_id}, granted at {p.acquired_at}) "
                            f"ran until {earlier.last_expires_at} (a key lives until its time is past expiresAt)",
                            (p, *earlier.extensions, g),
                        )
                    )
                    still.append(earlier)
            alive = still + [lease]


def _check_tokens(grants: list[Grant], violations: list[Violation]) -> None:
    """(b): tokens distinct, increasing with acquiredAt, never below the clock in microseconds."""
    by_token: dict[tuple[str, int], list[Grant]] = defaultdict(list)
    by_tenant: dict[str, list[Grant]] = defaultdict(list)
    for g in grants:
        by_token[(g.tenant, g.fencing_token)].append(g)
        by_tenant[g.tenant].append(g)
        if g.fencing_token < g.acquired_at * 1000:
            violations.append(
                Violation(
                    "token_below_clock",
                    f"lease {g.lease_id} on {g.contact} got token {g.fencing_token}, below Redis's time "
                    f"{g.acquired_at} ms in microseconds",
                    (g,),
                )
            )
    for (_, token), same in by_token.items():
        if len(same) > 1:
            leases = ", ".join(f"{g.lease_id} ({g.contact}, agent {g.agent_id}, at {g.acquired_at})" for g in same)
            violations.append(
                Violation("token_duplicate", f"token {token} granted {len(same)} times: {leases}", tuple(same))
            )
    for group in by_tenant.values():
        group = sorted(group, key=lambda g: g.acquired_at)
        top: Grant | None = None  # the grant with the largest token among strictly earlier grants
        i = 0
        while i < len(group):
            j = i
            while j < len(group) and group[j].acquired_at == group[i].acquired_at:
                j += 1
            same_ms = group[i:j]
            if top is not None:
                for g in same_ms:
                    # An equal token is a token_duplicate, reported once above.
                    if g.fencing_token < top.fencing_token:
                        violations.append(
                            Violation(
                                "token_order",
                                f"lease {g.lease_id} on {g.contact} granted at {g.acquired_at} with token "
                                f"{g.fencing_token}, not above token {top.fencing_token} of lease {top.lease_id} "
                                f"on {top.contact} granted earlier at {top.acquired_at}",
                                (top, g),
                            )
                        )
            for g in same_ms:
                if top is None or g.fencing_token > top.fencing_token:
                    top = g
            i = j


def _check_conflicts(
    conflicts: list[Conflict], leases: dict[str, _Lease], tolerance_ms: float, violations: list[Violation]
) -> None:
    """(c): each conflict's (holder, expiresAt) was the contact's lease state during its flight."""
    # (tenant, contact, agent, expiresAt) -> [(from, until, lease, event)]: when that state was current.
    states: dict[tuple[str, str, str, int], list[tuple[int, int, _Lease, Grant | Extension]]] = defaultdict(list)
    for lease in leases.values():
        g = lease.grant
        seq = lease.states()
        for n, (start, expires_at, event) in enumerate(seq):
            until = expires_at
            if n + 1 < len(seq):
                until = min(until, seq[n + 1][0])
            if lease.release is not None:
                until = min(until, lease.release.released_at)
            states[(g.tenant, g.contact, g.agent_id, expires_at)].append((start, until, lease, event))
    for c in conflicts:
        if c.agent_id is not None and c.agent_id == c.holder_id:
            violations.append(
                Violation("conflict_self", f"{c.contact}: agent {c.agent_id} was refused for holding it itself", (c,))
            )
            continue
        candidates = states.get((c.tenant, c.contact, c.holder_id, c.holder_expires_at), [])
        if not candidates:
            violations.append(
                Violation(
                    "conflict_unknown_holder",
                    f"{c.contact}: conflict named agent {c.holder_id} with expiresAt {c.holder_expires_at}, "
                    "which no recorded grant or extension of that contact gave it",
                    (c,),
                )
            )
            continue
        lo, hi = c.sent_ms - tolerance_ms, c.answered_ms + tolerance_ms
        if not any(start <= hi and until >= lo for start, until, _, _ in candidates):
            held = "; ".join(
                f"lease {lease.grant.lease_id} had it from {start} until {until}"
                for start, until, lease, _ in candidates
            )
            violations.append(
                Violation(
                    "conflict_stale_holder",
                    f"{c.contact}: conflict in flight {c.sent_ms:.1f}..{c.answered_ms:.1f} named agent "
                    f"{c.holder_id} with expiresAt {c.holder_expires_at}, but {held} "
                    f"(tolerance {tolerance_ms:g} ms)",
                    (c, *(event for _, _, _, event in candidates)),
                )
            )


def _check_clock(history: History, tolerance_ms: float, violations: list[Violation]) -> tuple[int, float]:
    """The premise of (c): server times fall inside their request's flight on the client's clock."""
    timed: list[tuple[Any, int | None]] = [
        *((g, g.acquired_at) for g in history.grants),
        *((e, e.at) for e in history.extensions),
        *((r, r.released_at) for r in history.releases),
    ]
    checked, worst = 0, 0.0
    for event, server_ms in timed:
        if server_ms is None or event.sent_ms is None or event.answered_ms is None:
            continue
        checked += 1
        # Redis's times are whole milliseconds (floored), the client's are fractions.
        outside = max(event.sent_ms - (server_ms + 1), server_ms - event.answered_ms, 0.0)
        worst = max(worst, outside)
        if outside > tolerance_ms:
            violations.append(
                Violation(
                    "clock",
                    f"server time {server_ms} of {type(event).__name__.lower()} of lease {event.lease_id} is "
                    f"{outside:.1f} ms outside its flight {event.sent_ms:.1f}..{event.answered_ms:.1f} "
                    f"(tolerance {tolerance_ms:g} ms): the client's clock cannot stand in for Redis's",
                    (event,),
                )
            )
    return checked, worst
