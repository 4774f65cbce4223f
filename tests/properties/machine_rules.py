"""The rules of the model-based test (test_model.py) for agents, leases and time:
each sends one request and checks its answer in full against the reference model
(model.py), or, for time passing, edits Redis the way time would, without sleeping.
Consensus has its rules in machine_consensus.py, who may do what (humans, attacks,
refusals by role) in machine_principals.py.

Each request goes with the credential a fleet would use (machine.py); a request the
model refuses must also leave Redis as it was (MachineBase.unchanged).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, initialize, multiple, precondition, rule

from tests.conftest import TENANT
from tests.properties.machine import (
    CONTACTS,
    HUMANS,
    NAMES,
    MachineBase,
    agent_roles,
    contact_inputs,
    duration_ms,
    intents,
    lease_durations,
    names,
    registry_entry,
    same,
)
from tests.properties.model import (
    AGENT_PREFIX,
    HUMAN_PREFIX,
    WINDOW_MS,
    Lease,
    Outcome,
    contact_of,
    normalize,
)
from tests.support.api import ISO_Z, LEASE_ID, V1, C, bearer, iso, ms
from tests.support.helpers import eventually

leases = Bundle("leases")  # every lease id granted (live or not)
requests = Bundle("requests")  # every consensus id made
members = st.sampled_from(NAMES + HUMANS)  # an agent's name or a human's


class ConcordRules(MachineBase):
    """The rules of agents, leases and time passing. Each rule sends one request and
    checks its answer in full; a time rule edits Redis instead, and the model with it."""

    # --- agents -----------------------------------------------------------------

    def _register(
        self,
        name: str,
        role: str | None,
        metadata: dict | None,
        alias: bool,
        kind: str = "agent",
        by: str = "admin",
        kind_field: bool = False,
    ) -> Outcome:
        """Register (or register again) the member of ``name``, of ``kind`` (the body
        says so if it is a human's, or kind_field), with the key of role ``by``."""
        fields: dict[str, Any] = {"name" if alias else "agentName": name}
        if role is not None:
            fields["role" if alias else "agentRole"] = role
        if metadata is not None:
            fields["metadata"] = metadata
        if kind == "human" or kind_field:
            fields["kind"] = kind
        outcome = self.model.register(name, role, metadata, kind, by)
        send = lambda: self.request("POST", f"{V1}/register", json=fields, headers=self.keys_by_role[by])  # noqa: E731
        what = "register" + (" human" if kind == "human" else "")
        if outcome.code is not None:
            self.expect(self.unchanged(send), outcome)
            self.seen(f"{what}:{outcome.code}")
            return outcome
        body = self.expect(send(), outcome)
        agent = self.model.member(self.model.agent_id(name))
        self._new_credential(agent.id, body.get("credential"))
        # One moment of Redis time; a human has no heartbeat.
        moment = body["updatedAt"] if kind == "human" else body["lastHeartbeat"]
        assert ISO_Z.fullmatch(moment) and body["updatedAt"] == moment, body
        if outcome.status == 201:
            agent.registered_at = body["registeredAt"]
            assert body["registeredAt"] == moment, body
        expected = {
            "id": agent.id,
            "tenantId": TENANT,
            "agentName": name,
            "agentRole": agent.role,
            "status": "active",
            "lastHeartbeat": None if kind == "human" else moment,
            "registeredAt": agent.registered_at,
            "updatedAt": moment,
            "metadata": agent.metadata,
            "credential": agent.credential,
            "kind": kind,
        }
        same(body, expected, "register")
        self.seen(f"{what}:{'created' if outcome.status == 201 else 'updated'}")
        return outcome

    @initialize(
        target=leases,
        fleet=st.lists(names, unique=True, min_size=2, max_size=len(NAMES)),
        data=st.data(),
    )
    def start_fleet(self, fleet: list[str], data: st.DataObject) -> Any:
        """Some agents (some of a role other than the default, for voter roles to
        tell apart), and leases on some contacts, to start from."""
        for name in fleet:
            self._register(name, data.draw(agent_roles, label="role"), None, alias=False)
        holders = data.draw(st.lists(st.sampled_from([None, *fleet]), min_size=len(CONTACTS), max_size=len(CONTACTS)))
        granted = [
            self._acquire(self.model.agent_id(name), contact, None, {})
            for name, contact in zip(holders, CONTACTS)
            if name is not None
        ]
        return multiple(*(lease_id for lease_id in granted if isinstance(lease_id, str)))

    @rule(
        name=names,
        role=agent_roles,
        metadata=st.sampled_from([None, {}, {"team": "emea"}]),
        alias=st.booleans(),
        by=st.sampled_from(["admin", "enroll"]),
        kind_field=st.booleans(),
    )
    def register(
        self, name: str, role: str | None, metadata: dict | None, alias: bool, by: str, kind_field: bool
    ) -> None:
        """An agent, by the admin or the enroll key, the body saying "kind": "agent" or not."""
        self._register(name, role, metadata, alias, by=by, kind_field=kind_field)

    def _new_credential(self, agent_id: str, credential: object) -> None:
        """A credential just answered for the member: of the documented shape (its
        kind's prefix), never seen before; the model's from now on (the one before is
        retired)."""
        prefix = HUMAN_PREFIX if agent_id in self.model.humans else AGENT_PREFIX
        assert isinstance(credential, str) and credential.startswith(f"{prefix}{TENANT}.{agent_id}."), credential
        assert credential not in self.model.retired and all(
            a.credential != credential for a in [*self.model.agents.values(), *self.model.humans.values()]
        ), "a credential answered twice"
        self.model.issue(agent_id, credential)

    def _send(self, refusal: Outcome | None, send: Any) -> Any:
        """Send; a request the model refuses must also leave Redis as it was."""
        return self.unchanged(send) if refusal is not None else send()

    @rule(name=names, with_tenant_id=st.booleans(), named=st.booleans())
    def heartbeat(self, name: str, with_tenant_id: bool, named: bool) -> None:
        """With the agent's credential. (with_tenant_id: the body names the credential's
        own tenant, which is allowed; named: the body names the agent, else the
        credential's agent is meant.)"""
        agent_id = self.model.agent_id(name)
        credential = self.credential_of(agent_id)
        refusal = self.model.authorize(agent_id, credential, agent_id if named else None, "heartbeat")
        outcome = refusal or self.model.heartbeat(agent_id)
        fields = {**({"agentId": agent_id} if named else {}), **({"tenantId": TENANT} if with_tenant_id else {})}
        response = self._send(
            refusal, lambda: self.request("POST", f"{C}/heartbeat", json=fields, headers=bearer(credential))
        )
        body = self.expect(response, outcome)
        if outcome.code is None:
            last = ms(body["lastHeartbeat"])
            expected = {
                "agentId": agent_id,
                "status": "active",
                "lastHeartbeat": iso(last),
                "activeUntil": iso(last + WINDOW_MS),
            }
            same(body, expected, "heartbeat")
        self.seen(f"heartbeat:{outcome.code or 'ok'}")

    @precondition(lambda self: len(self.model.agents) >= 3)  # keep a fleet to work with
    @rule(name=members)
    def remove_agent(self, name: str) -> None:
        """An agent or a human, by the admin key."""
        agent_id = self.model.agent_id(name)
        human = agent_id in self.model.humans
        released = self.model.deregister(agent_id)
        response = self.request("DELETE", f"{V1}/agents/{agent_id}", headers=self.admin)
        if released is None:
            self.expect(response, Outcome(404, "agent_not_found"))
        else:
            expected = {"id": agent_id, "removed": True, "releasedLeases": released}
            same(self.expect(response, Outcome(200)), expected, "remove agent")
            # Its registry goes with it, stale entries too.
            self.lingering = {token: entry for token, entry in self.lingering.items() if entry[0] != agent_id}
        if released is None:
            self.seen("remove_agent:unknown")
        else:
            self.seen("remove_agent:human" if human else f"remove_agent:released {min(released, 2)}")

    @rule(name=members)
    def rotate_credential(self, name: str) -> None:
        """The admin key gives the member a new credential; the one before is refused from now on."""
        agent_id = self.model.agent_id(name)
        send = lambda: self.request("POST", f"{V1}/agents/{agent_id}/credentials", headers=self.admin)  # noqa: E731
        if self.model.member(agent_id) is None:
            self.expect(self.unchanged(send), Outcome(404, "agent_not_found"))
            self.seen("rotate:agent_not_found")
            return
        body = self.expect(send(), Outcome(200))
        assert ISO_Z.fullmatch(body.get("rotatedAt", "")), body
        self._new_credential(agent_id, body.get("credential"))
        expected = {"agentId": agent_id, "credential": self.model.member(agent_id).credential}
        same(body, {**expected, "rotatedAt": body["rotatedAt"]}, "rotate")
        self.seen("rotate:human" if agent_id in self.model.humans else "rotate:ok")

    # --- leases -----------------------------------------------------------------

    @rule(
        target=leases,
        name=names,
        spelling=contact_inputs,
        held=st.booleans(),
        who=st.sampled_from(["named", "holder", "rival"]),
        intent=intents,
        duration=lease_durations,
        named=st.booleans(),
        data=st.data(),
    )
    def acquire(
        self,
        name: str,
        spelling: str,
        held: bool,
        who: str,
        intent: str | None,
        duration: dict,
        named: bool,
        data: st.DataObject,
    ) -> Any:
        """A contact, or (held) one that is leased, asked for by the agent named, by its
        holder (extend) or by an active rival (conflict; a takeover if the holder lapsed),
        with its credential, the body naming it or not."""
        if held and self.model.leases:
            spelling = data.draw(st.sampled_from(sorted(self.model.leases)), label="held contact").upper()
        return self._acquire(self._caller(name, contact_of(spelling), who), spelling, intent, duration, named)

    def _takeovers(self) -> list[tuple[str, str]]:
        """(contact, agent) pairs where the agent is active and the contact's holder is not."""
        return [
            (contact, agent.id)
            for contact, lease in self.model.leases.items()
            if not self.model.is_active(lease.holder)
            for agent in self.model.agents.values()
            if agent.active
        ]

    @precondition(lambda self: self._takeovers())
    @rule(target=leases, data=st.data())
    def take_over(self, data: st.DataObject) -> Any:
        """An active agent asks for a contact whose holder has lapsed, and gets it."""
        contact, agent_id = data.draw(st.sampled_from(self._takeovers()), label="contact, agent")
        return self._acquire(agent_id, contact, None, {})

    def _acquire(
        self, agent_id: str, spelling: str, intent: str | None, duration: dict[str, int], named: bool = True
    ) -> Any:
        contact = contact_of(spelling)
        credential = self.credential_of(agent_id)
        fields = {**({"agentId": agent_id} if named else {}), "contactEmail": spelling, **duration}
        if intent is not None:
            fields["intent"] = intent
        refusal = self.model.authorize(agent_id, credential, agent_id if named else None, "acquire")
        if refusal is not None:
            send = lambda: self.request("POST", f"{C}/lease", json=fields, headers=bearer(credential))  # noqa: E731
            self.expect(self.unchanged(send), refusal)
            self.seen(f"acquire:{refusal.code}")
            return multiple()
        held = self.model.leases.get(contact)
        kind = self.model.acquire(agent_id, contact)
        response = self.request("POST", f"{C}/lease", json=fields, headers=bearer(credential))
        self.seen(f"acquire:{'takeover' if kind == 'grant' and held else kind}")
        if kind in ("agent_not_found", "agent_inactive"):
            self.expect(response, Outcome(404 if kind == "agent_not_found" else 409, kind))
            return multiple()
        if kind == "conflict":
            holder = {
                "conflict": True,
                "contactEmail": normalize(spelling),
                "contact": contact,
                "leaseHolder": self.model.holder_body(held),
            }
            self.expect(response, Outcome(409, "lease_conflict", holder))
            return multiple()
        if kind == "extend":  # same id, token and acquiredAt; expiry moved; intent replaced if given
            body = self.expect(response, Outcome(200))
            assert ISO_Z.fullmatch(body["expiresAt"]), body
            held.expires_at = body["expiresAt"]
            held.intent = intent if intent is not None else held.intent
            same(body, self.model.lease_body(held, spelling), "acquire (extend)")
            return multiple()
        body = self.expect(response, Outcome(201))
        assert LEASE_ID.fullmatch(body["id"]) and body["id"] not in self.model.granted_to, body
        if held is not None:  # a takeover: the old holder's registry entry may stay, stale
            self.lingering[held.token] = (held.holder, registry_entry(held))
        acquired = ms(body["acquiredAt"])
        assert ms(body["expiresAt"]) == acquired + duration_ms(duration, 30 * 60_000), body
        lease = Lease(
            id=body["id"],
            contact=contact,
            holder=agent_id,
            holder_name=self.model.agents[agent_id].name,
            intent=intent,
            token=self.grant_token(body["fencingToken"]),
            acquired_at=body["acquiredAt"],
            expires_at=body["expiresAt"],
        )
        self.model.grant(lease)
        same(body, self.model.lease_body(lease, spelling), "acquire (grant)")
        return lease.id

    def _lease_id(self, any_id: str, live: bool, data: st.DataObject) -> str:
        """The lease id drawn from all ids ever granted, or (live) a live lease's id: most
        granted ids are long gone, and the live ones are where the holder rules bite."""
        if live and self.model.leases:
            # Ordered by contact, never by id: ids are random, and the draws must not depend on them.
            return self.model.leases[data.draw(st.sampled_from(sorted(self.model.leases)), label="live")].id
        return any_id

    @rule(
        lease_id=leases,
        live=st.booleans(),
        by_holder=st.booleans(),
        other=names,
        duration=lease_durations,
        data=st.data(),
    )
    def renew(
        self, lease_id: str, live: bool, by_holder: bool, other: str, duration: dict[str, int], data: st.DataObject
    ) -> None:
        lease_id = self._lease_id(lease_id, live, data)
        agent_id = self.model.granted_to[lease_id] if by_holder else self.model.agent_id(other)
        credential = self.credential_of(agent_id)
        refusal = self.model.authorize(agent_id, credential, agent_id, "renew")
        outcome = refusal or self.model.renew(lease_id, agent_id)
        response = self._send(
            refusal,
            lambda: self.request(
                "POST",
                f"{C}/lease/{lease_id}/renew",
                json={"agentId": agent_id, **duration},
                headers=bearer(credential),
            ),
        )
        body = self.expect(response, outcome)
        if outcome.code is None:  # same lease and token, expiry moved
            lease = self.model.live_lease(lease_id)
            assert ISO_Z.fullmatch(body["expiresAt"]), body
            lease.expires_at = body["expiresAt"]
            same(body, self.model.lease_body(lease), "renew")
        self.seen(f"renew:{outcome.code or 'ok'}")

    @rule(
        lease_id=leases,
        live=st.booleans(),
        by=st.sampled_from(["admin", "agent"]),
        who=st.sampled_from(["anyone", "holder", "other"]),
        other=names,
        data=st.data(),
    )
    def release(self, lease_id: str, live: bool, by: str, who: str, other: str, data: st.DataObject) -> None:
        """By the admin key (a forced release, or with ?agentId only if that agent holds
        it), or by an agent with its credential: the holder (naming itself or not), or
        another agent naming itself."""
        lease_id = self._lease_id(lease_id, live, data)
        holder, rival = self.model.granted_to[lease_id], self.model.agent_id(other)
        refusal = None
        if by == "admin":
            agent_id = {"anyone": None, "holder": holder, "other": rival}[who]
            query, headers = ({"agentId": agent_id} if agent_id else {}), self.admin
        else:
            agent_id = rival if who == "other" else holder
            credential = self.credential_of(agent_id)
            claimed = None if who == "anyone" else agent_id
            refusal = self.model.authorize(agent_id, credential, claimed, "release")
            query, headers = ({"agentId": claimed} if claimed else {}), bearer(credential)
        outcome = refusal or self.model.release(lease_id, agent_id)
        send = lambda: self.request("DELETE", f"{C}/lease/{lease_id}", params=query, headers=headers)  # noqa: E731
        body = self.expect(self._send(refusal, send), outcome)
        if outcome.code is None:
            assert body == {"id": lease_id, "released": True, "releasedAt": body["releasedAt"]}
            assert ISO_Z.fullmatch(body["releasedAt"]), body
        self.seen(f"release:{by}:{who}:{outcome.code or 'ok'}")

    def _reader(self, data: st.DataObject) -> dict[str, str]:
        """Who reads: the admin or the read key, or a member (an agent or a human) with
        its current credential (a read proves it: a retired one might still count for
        the one second of cache)."""
        members = [*self.model.agents.values(), *self.model.humans.values()]
        readers = [a.credential for a in members if a.credential]
        if not readers or data.draw(st.booleans(), label="read with a key"):
            return self.keys_by_role[data.draw(st.sampled_from(["admin", "read"]), label="key")]
        return bearer(data.draw(st.sampled_from(readers), label="reader"))

    @rule(lease_id=leases, live=st.booleans(), data=st.data())
    def read_lease(self, lease_id: str, live: bool, data: st.DataObject) -> None:
        lease_id = self._lease_id(lease_id, live, data)
        lease = self.model.live_lease(lease_id)
        response = self.request("GET", f"{C}/lease/{lease_id}", headers=self._reader(data))
        if lease is None:
            self.expect(response, Outcome(404, "lease_not_found"))
        else:
            same(self.expect(response, Outcome(200)), self.model.lease_body(lease), "read lease")
        self.seen(f"read_lease:{'live' if lease else 'gone'}")

    def _caller(self, name: str, contact: str, who: str) -> str:
        """The agent named, or if the contact is held its holder or an active rival of the
        holder: the calls that matter most, which a random name rarely makes."""
        named, lease = self.model.agent_id(name), self.model.leases.get(contact)
        if lease is None or who == "named":
            return named
        if who == "holder":
            return lease.holder
        rivals = [a.id for a in self.model.agents.values() if a.active and a.id != lease.holder]
        return rivals[NAMES.index(name) % len(rivals)] if rivals else named

    @rule(
        name=names,
        spelling=contact_inputs,
        who=st.sampled_from(["named", "holder", "rival"]),
        query=st.sampled_from(["agentId", "contactEmail", "both"]),
        data=st.data(),
    )
    def list_leases(self, name: str, spelling: str, who: str, query: str, data: st.DataObject) -> None:
        contact = contact_of(spelling)
        agent_id = self._caller(name, contact, who) if query != "contactEmail" else None
        params = {"agentId": agent_id, "contactEmail": spelling if query != "agentId" else None}
        query_string = {k: v for k, v in params.items() if v is not None}
        response = self.request("GET", f"{C}/leases", params=query_string, headers=self._reader(data))
        body = self.expect(response, Outcome(200))
        expected = self.model.leases_of(agent_id, contact if query != "agentId" else None)
        listed = {"leases": [self.model.lease_body(lease) for lease in expected], "nextCursor": None}
        same(body, listed, "list leases")
        self.seen(f"list_leases:{min(len(expected), 2)}")

    @rule(
        name=names,
        spelling=contact_inputs,
        who=st.sampled_from(["named", "holder", "rival"]),
        via=st.sampled_from(["own", "own, unnamed", "admin", "gate"]),
    )
    def send_check(self, name: str, spelling: str, who: str, via: str) -> None:
        """The gate before a send, without a fencing token: asked by the agent with its
        credential (the body naming it or not), or by the admin or gate key for it."""
        self._send_check(self._caller(name, contact_of(spelling), who), spelling, None, via)

    @rule(
        name=names,
        spelling=contact_inputs,
        who=st.sampled_from(["named", "holder", "rival"]),
        token=st.sampled_from(["current", "earlier", "other contact's"]),
        via=st.sampled_from(["own", "own, unnamed", "admin", "gate"]),
        data=st.data(),
    )
    def send_check_with_token(
        self, name: str, spelling: str, who: str, token: str, via: str, data: st.DataObject
    ) -> None:
        """The gate with a fencing token: the contact's current one, any granted earlier
        (stale unless it is the current one), or another contact's."""
        contact = contact_of(spelling)
        lease = self.model.leases.get(contact)
        others = [other.token for c, other in self.model.leases.items() if c != contact]
        pick = {"current": [lease.token] if lease else [], "earlier": self.tokens}.get(token, others)
        value = data.draw(st.sampled_from(pick), label=f"{token} token") if pick else 1
        self._send_check(self._caller(name, contact, who), spelling, value, via)

    def _send_check(self, agent_id: str, spelling: str, token: int | None, via: str) -> None:
        named = via != "own, unnamed"  # a key must name the agent; a credential may leave it out
        fields: dict[str, Any] = {**({"agentId": agent_id} if named else {}), "contactEmail": spelling}
        if token is not None:
            fields["fencingToken"] = token
        refusal = None
        if via.startswith("own"):
            credential = self.credential_of(agent_id)
            headers = bearer(credential)
            refusal = self.model.authorize(agent_id, credential, agent_id if named else None, "send_check")
        else:
            headers = self.admin if via == "admin" else self.gate
        send = lambda: self.request("POST", f"{C}/send-check", json=fields, headers=headers)  # noqa: E731
        if refusal is not None:
            self.expect(self.unchanged(send), refusal)
            self.seen(f"send_check:{refusal.code}")
            return
        expected = self.model.send_check(agent_id, spelling, token)
        same(self.expect(send(), Outcome(200)), expected, "send-check")
        self.seen(f"send_check:{expected.get('reason', 'allowed')}{'' if token is None else ' (token)'}")

    # --- time passing, without sleeping -------------------------------------------

    @precondition(lambda self: any(a.active for a in self.model.agents.values()))
    @rule(whom=st.sampled_from(["anyone", "a lease holder", "a peer yet to vote"]), data=st.data())
    def time_agent_lapses(self, whom: str, data: st.DataObject) -> None:
        """An active agent's last heartbeat becomes 1 ms after the epoch: far outside the
        window. Preferably (if there is one) a lease holder, so that takeovers happen, or
        a peer yet to vote on a pending request, so that inactive voters and shrinking
        majorities do."""
        active = [a.id for a in self.model.agents.values() if a.active]
        preferred = {
            "anyone": active,
            "a lease holder": [lease.holder for lease in self.model.leases.values() if lease.holder in active],
            "a peer yet to vote": [agent_id for _, agent_id in self._peers("counting")],
        }[whom]
        agent_id = data.draw(st.sampled_from(preferred or active), label="agent")
        assert self.run(self.redis.zadd(self.keys.heartbeats(TENANT), {agent_id: 1}, xx=True)) == 0
        # A lapse made by hand lies behind the lapse mark: without it, the next consensus
        # script sweeps every lapsed agent (tests/support/api.py make_inactive).
        self.run(self.redis.delete(self.keys.lapse_mark(TENANT)))
        self.model.lapse(agent_id)
        self.seen("time:agent lapses")

    @precondition(lambda self: self.model.leases)
    @rule(data=st.data())
    def time_lease_expires(self, data: st.DataObject) -> None:
        """Its lease key gets a 1 ms TTL; Redis removes it by itself. The entry in the
        holder's registry stays, stale, as after a real expiry: reads check it against
        the lease."""
        contact = data.draw(st.sampled_from(sorted(self.model.leases)), label="contact")
        lease, lease_key = self.model.leases[contact], self.keys.lease(TENANT, contact)
        assert self.run(self.redis.pexpire(lease_key, 1)), lease_key

        async def gone() -> bool:
            return await self.redis.exists(lease_key) == 0

        self.run(eventually(gone, timeout=10, what=f"the lease on {contact} to expire", every=0.002))
        self.lingering[lease.token] = (lease.holder, registry_entry(lease))
        self.model.expire(contact)
        self.seen("time:lease expires")

    @rule(consensus_id=requests)
    def time_deadline_passes(self, consensus_id: str) -> None:
        """Its expiresAt (and its consensus-due score, if still due) move 1 ms into the past."""
        seconds, micros = self.run(self.redis.time())
        past = int(seconds) * 1000 + int(micros) // 1000 - 1
        self.run(self.redis.hset(self.keys.consensus(TENANT, consensus_id), "expiresAt", str(past)))
        self.run(self.redis.zadd(self.keys.consensus_due(TENANT), {consensus_id: past}, xx=True))
        self.model.consensus[consensus_id].pass_deadline(iso(past))
        self.seen("time:deadline passes")
