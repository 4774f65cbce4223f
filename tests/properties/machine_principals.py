"""The rules of the model-based test (test_model.py) about who may do what: human
members, and every principal acting off its role or as someone it is not.

Human members are registered by the admin key (the enroll key is refused) and vote
with their own credentials (machine_consensus.py), where a request's policy asks
for them. The attacks, each refused by the model with nothing written (a snapshot
of the tenant's keys before and after): a member acting as another agent (its own
credential, the other's id: 403 agent_mismatch); a member acting with a credential
it no longer holds, rotated, replaced by registering again or revoked with it
(401); a credential calling what its role may not (a human's acting as an agent or
changing a policy; an agent's, or the gate, enroll or read key, changing a policy:
403 insufficient_scope naming the role); and a name registered again as the other
kind (409 kind_mismatch).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from tests.properties.machine import DECISIONS, HUMANS, NAMES, contact_inputs, policy_bodies
from tests.properties.machine_consensus import ConsensusRules, policy_path
from tests.properties.model import HUMAN_PREFIX, Outcome
from tests.support.api import C, bearer, unknown_id

# What an agent does with its credential: the calls that act as an agent.
ACTIONS = ("heartbeat", "acquire", "renew", "release", "send_check", "request_consensus", "vote")
# What a human's credential may not do: act as an agent in any way but a vote, or change a policy.
HUMAN_REFUSED = (*(action for action in ACTIONS if action != "vote"), "set_policy", "delete_policy")
humans = st.sampled_from(HUMANS)
roles = st.sampled_from([None, "approver", "finance"])


class PrincipalRules(ConsensusRules):
    """Humans, attacks, and refusals by role."""

    # --- human members ------------------------------------------------------------

    @initialize(names=st.lists(humans, unique=True, min_size=1, max_size=2))
    def start_humans(self, names: list[str]) -> None:
        """Human members from the start, so that requests made early ask them."""
        for name in names:
            self._register(name, None, None, alias=False, kind="human")

    @rule(
        name=humans,
        role=roles,
        metadata=st.sampled_from([None, {"desk": "finance"}]),
        by=st.sampled_from(["admin", "admin", "enroll"]),
    )
    def register_human(self, name: str, role: str | None, metadata: dict | None, by: str) -> None:
        """A human member, registered (or again) by the admin key; the enroll key is
        refused (403 insufficient_scope) with nothing written."""
        self._register(name, role, metadata, alias=False, kind="human", by=by)

    # --- attacks: acting as another agent, or with a credential no longer held ------

    def _acting(
        self, action: str, agent_id: str, name_it: bool, data: st.DataObject
    ) -> tuple[str, str, dict[str, Any]]:
        """The request of ``action`` for agent ``agent_id``, naming it (``name_it``) or
        leaving the agent out: method, path, and its body or query. A lease it needs is
        that agent's live lease if it has one (what an attacker aims at), else one drawn
        from all those granted, else an id that names nothing; a request, one drawn."""
        claimed = agent_id if name_it else None
        named = {"agentId": claimed} if claimed else {}
        contact = data.draw(contact_inputs, label="contact")
        if action == "heartbeat":
            return "POST", f"{C}/heartbeat", {"json": named}
        if action == "acquire":
            return "POST", f"{C}/lease", {"json": {**named, "contactEmail": contact}}
        if action == "send_check":
            return "POST", f"{C}/send-check", {"json": {**named, "contactEmail": contact}}
        if action == "request_consensus":
            asking = {"requestingAgentId": claimed} if claimed else {}
            return "POST", f"{C}/consensus", {"json": {**asking, "action": "send_pricing_override"}}
        if action == "vote":
            made = list(self.model.consensus)  # in the order they were made: the draw never depends on ids
            consensus_id = data.draw(st.sampled_from(made), label="request") if made else unknown_id("cons")
            return "POST", f"{C}/consensus/{consensus_id}/vote", {"json": {**named, "vote": "approve"}}
        own = [lease.id for _, lease in sorted(self.model.leases.items()) if lease.holder == agent_id]
        granted = own or list(self.model.granted_to)
        lease_id = data.draw(st.sampled_from(granted), label="lease") if granted else unknown_id("lease")
        if action == "renew":
            return "POST", f"{C}/lease/{lease_id}/renew", {"json": named}
        assert action == "release", action
        return "DELETE", f"{C}/lease/{lease_id}", {"params": named}

    @precondition(lambda self: any(agent.credential for agent in self.model.agents.values()))
    @rule(action=st.sampled_from(ACTIONS), data=st.data())
    def impersonate(self, action: str, data: st.DataObject) -> None:
        """A registered member acts as another agent (registered or not): its own
        current credential, the other's id. 403 agent_mismatch, naming its own id;
        nothing written. A human's credential tries the one call it may make, a vote."""
        members = [*self.model.agents.values(), *self.model.humans.values()]
        actors = [agent.id for agent in members if agent.credential]
        actor = data.draw(st.sampled_from(actors), label="actor")
        victim = self.model.agent_id(data.draw(st.sampled_from([n for n in NAMES if self.model.agent_id(n) != actor])))
        credential = self.model.member(actor).credential
        action = "vote" if actor in self.model.humans else action
        outcome = self.model.authorize(actor, credential, victim, action)
        assert outcome == Outcome(403, "agent_mismatch", {"agentId": actor}), outcome
        method, path, kwargs = self._acting(action, victim, True, data)
        response = self.unchanged(lambda: self.request(method, path, headers=bearer(credential), **kwargs))
        body = self.expect(response, outcome)
        assert actor in body["detail"] and victim in body["detail"], body
        self.seen(f"impersonate:{action}" + (" (human)" if actor in self.model.humans else ""))

    @precondition(lambda self: self.model.retired)
    @rule(action=st.sampled_from(ACTIONS), named=st.booleans(), data=st.data())
    def act_with_a_stale_credential(self, action: str, named: bool, data: st.DataObject) -> None:
        """A member acts as itself with a credential it no longer holds: rotated, replaced
        by registering again, or revoked when the member was removed. 401; nothing
        written. A human's tries the one call it may make, a vote."""
        credential = data.draw(st.sampled_from(list(self.model.retired)), label="stale credential")
        agent_id = self.model.retired[credential]
        action = "vote" if credential.startswith(HUMAN_PREFIX) else action
        outcome = self.model.authorize(agent_id, credential, agent_id if named else None, action)
        assert outcome == Outcome(401, "unauthorized"), outcome
        method, path, kwargs = self._acting(action, agent_id, named, data)
        response = self.unchanged(lambda: self.request(method, path, headers=bearer(credential), **kwargs))
        self.expect(response, outcome)
        self.seen(f"stale:{action}")

    # --- refused by role, with nothing written ------------------------------------

    def _out_of_scope(self, call: str, actor: str, data: st.DataObject) -> tuple[str, str, dict[str, Any]]:
        """The request of ``call``: a policy change (its body drawn), or an acting call as ``actor``."""
        if call in ("set_policy", "delete_policy"):
            path = policy_path(data.draw(st.sampled_from(DECISIONS), label="action"))
            if call == "delete_policy":
                return "DELETE", path, {}
            return "PUT", path, {"json": data.draw(policy_bodies, label="policy")}
        return self._acting(call, actor, data.draw(st.booleans(), label="named"), data)

    @rule(
        who=st.sampled_from(["human", "agent", "gate", "enroll", "read"]),
        call=st.sampled_from(HUMAN_REFUSED),
        data=st.data(),
    )
    def act_out_of_scope(self, who: str, call: str, data: st.DataObject) -> None:
        """A credential calls what its role may not: a human's (current or retired: its
        prefix says whose) any acting call but a vote, or a policy change; an agent's,
        the gate, enroll or read key, a policy change. 403 insufficient_scope naming
        the role (keyRole); nothing written."""
        if who == "human" and self.human_credentials():
            credential = data.draw(st.sampled_from(self.human_credentials()), label="human credential")
            actor, headers = credential.split(".")[2], bearer(credential)
        elif who == "agent" and any(a.credential for a in self.model.agents.values()):
            agent_ids = [a.id for a in self.model.agents.values() if a.credential]
            actor = data.draw(st.sampled_from(agent_ids), label="agent")
            headers = bearer(self.model.agents[actor].credential)
        else:
            who = who if who in self.keys_by_role else "gate"
            actor, headers = "", self.keys_by_role[who]
        if who != "human":
            call = data.draw(st.sampled_from(["set_policy", "delete_policy"]), label="policy change")
        outcome = self.model.scope(who, call)
        assert outcome == Outcome(403, "insufficient_scope", {"keyRole": who}), (who, call, outcome)
        method, path, kwargs = self._out_of_scope(call, actor, data)
        response = self.unchanged(lambda: self.request(method, path, headers=headers, **kwargs))
        self.expect(response, outcome)
        self.seen(f"out_of_scope:{who}:{'policy' if call.endswith('_policy') else 'acting'}")

    @precondition(lambda self: self.model.agents or self.model.humans)
    @rule(by=st.sampled_from(["admin", "enroll"]), kind_field=st.booleans(), data=st.data())
    def register_as_the_other_kind(self, by: str, kind_field: bool, data: st.DataObject) -> None:
        """A registered member's name, registered again as the other kind (an agent's
        as a human, by either key; a human's as an agent, the body saying so or
        leaving kind out): 409 kind_mismatch naming its kind, nothing written."""
        registered = sorted(a.name for a in [*self.model.agents.values(), *self.model.humans.values()])
        name = data.draw(st.sampled_from(registered), label="member")
        other = "agent" if self.model.agent_id(name) in self.model.humans else "human"
        outcome = self._register(name, None, None, alias=False, kind=other, by=by, kind_field=kind_field)
        assert outcome.code == "kind_mismatch", outcome
