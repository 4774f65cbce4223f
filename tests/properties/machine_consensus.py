"""The consensus rules of the model-based test (test_model.py): consensus policies,
requests, votes (by agents and by human members) and reads, each answer checked
in full against the reference model (model.py).

An admin key sets and deletes the policy of a few actions (machine.DECISIONS), which
requests name, preferably one with a policy of its own; the model records the
policy in force when a request is made, fixes its electorate then, and decides it
by that policy alone. Besides votes by names drawn at random, a few rules pick from
the model's state (a peer yet to vote, one outside the electorate, a human a
request asks for): a random walk alone seldom lines up a deciding vote.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st
from hypothesis.stateful import initialize, multiple, precondition, rule

from tests.properties.machine import (
    consensus_timeouts,
    contact_inputs,
    decisions,
    duration_ms,
    names,
    policy_bodies,
    same,
    vote_reasons,
)
from tests.properties.machine_rules import ConcordRules, requests
from tests.properties.model import Outcome, normalize
from tests.properties.model_consensus import DEFAULT_POLICY, Policy
from tests.support.api import CONS_ID, ISO_Z, C, bearer, iso, ms

POLICIES = f"{C}/consensus-policies"


def policy_path(action: str) -> str:
    """An action's policy path: the action percent-encoded (it may hold a space)."""
    return f"{POLICIES}/{quote(action, safe='')}"


class ConsensusRules(ConcordRules):
    """Policies, consensus requests, votes and reads."""

    # --- consensus policies -----------------------------------------------------

    def _set_policy(self, action: str, body: dict[str, Any]) -> None:
        response = self.request("PUT", policy_path(action), json=body, headers=self.admin)
        answer = self.expect(response, Outcome(200))
        assert ISO_Z.fullmatch(answer.get("updatedAt") or ""), answer
        self.model.policies[action] = Policy(
            rule=body.get("rule", "majority"),
            voter_roles=tuple(sorted(body.get("voterRoles", []))),
            min_votes=body.get("minVotes", 0),
            human_approvals=body.get("humanApprovals", 0),
            updated_at=answer["updatedAt"],
        )
        same(answer, self.model.policy_body(action), "set policy")
        self.seen("policy:set" + (" (humans)" if body.get("humanApprovals") else ""))

    @rule(action=decisions, body=policy_bodies, delete=st.sampled_from([False, False, True]))
    def set_policy(self, action: str, body: dict[str, Any], delete: bool) -> None:
        """The admin key sets the whole policy of an action (what the body leaves out
        takes its default), or deletes it: requests made from now on follow it, and
        those in flight keep theirs."""
        if not delete:
            self._set_policy(action, body)
            return
        had = self.model.policies.pop(action, None)
        response = self.request("DELETE", policy_path(action), headers=self.admin)
        same(self.expect(response, Outcome(200)), self.model.policy_body(action), "delete policy")
        self.seen("policy:deleted" if had else "policy:deleted (none)")

    @rule(action=st.one_of(st.none(), decisions), data=st.data())
    def read_policies(self, action: str | None, data: st.DataObject) -> None:
        """Any reader (a key, an agent, a human) reads one action's policy in force, or
        the tenant's own policies."""
        if action is None:
            response = self.request("GET", POLICIES, headers=self._reader(data))
            listed = [self.model.policy_body(a) for a in sorted(self.model.policies)]
            same(self.expect(response, Outcome(200)), {"policies": listed}, "list policies")
        else:
            response = self.request("GET", policy_path(action), headers=self._reader(data))
            same(self.expect(response, Outcome(200)), self.model.policy_body(action), "read policy")
        self.seen("policy:read")

    # --- requests, votes and reads ---------------------------------------------------

    @rule(
        target=requests,
        name=names,
        spelling=st.one_of(st.none(), contact_inputs),
        reason=st.sampled_from([None, "", "custom pricing"]),
        timeout=consensus_timeouts,
        action=decisions,
    )
    def request_consensus(self, name: str, spelling: str | None, reason: str | None, timeout: dict, action: str) -> Any:
        return self._request_consensus(self.model.agent_id(name), spelling, reason, timeout, action)

    @precondition(lambda self: self.model.policies)
    @rule(target=requests, name=names, data=st.data())
    def request_under_a_policy(self, name: str, data: st.DataObject) -> Any:
        """A request for an action with a policy of its own: a random walk makes most
        requests under the default, and few steps after one are left to decide it."""
        action = data.draw(st.sampled_from(sorted(self.model.policies)), label="action")
        return self._request_consensus(self.model.agent_id(name), None, None, {}, action)

    @initialize(target=requests, name=names, action=decisions, policy=st.one_of(st.none(), policy_bodies))
    def open_request(self, name: str, action: str, policy: dict[str, Any] | None) -> Any:
        """A pending request to start from, by an agent registered for it, under a policy
        set for its action just before, or the default. Initialize rules run in any
        order, so it may be the first agent of the fleet, and made before the humans
        that start are registered (who are then "later")."""
        self._register(name, None, None, alias=False)
        if policy is not None:
            self._set_policy(action, policy)
        return self._request_consensus(self.model.agent_id(name), None, None, {}, action)

    def _request_consensus(
        self, agent_id: str, spelling: str | None, reason: str | None, timeout: dict, action: str
    ) -> Any:
        fields: dict[str, Any] = {"requestingAgentId": agent_id, "action": action, **timeout}
        if spelling is not None:
            fields["contactEmail"] = spelling
        if reason is not None:
            fields["reason"] = reason
        credential = self.credential_of(agent_id)
        refusal = self.model.authorize(agent_id, credential, agent_id, "request_consensus")
        send = lambda: self.request("POST", f"{C}/consensus", json=fields, headers=bearer(credential))  # noqa: E731
        response = self._send(refusal, send)
        error = refusal or self.model.agent_error(agent_id)
        self.seen(f"request_consensus:{error.code if error else 'created'}")
        if error is not None:
            self.expect(response, error)
            return multiple()
        body = self.expect(response, Outcome(201))
        assert CONS_ID.fullmatch(body["id"]) and body["id"] not in self.model.consensus, body
        created = ms(body["createdAt"])
        expires = created + duration_ms(timeout, 60 * 60_000)
        c = self.model.open_request(
            agent_id,
            action,
            id=body["id"],
            contact=normalize(spelling) if spelling is not None else None,
            reason=reason or None,
            created_at=iso(created),
            expires_at=iso(expires),
        )
        self.check_consensus(c, body)
        if c.policy is not DEFAULT_POLICY:
            self.seen("request_consensus:under a policy")
        return c.id

    def _vote(self, consensus_id: str, agent_id: str, choice: str, reason: str | None) -> None:
        c = self.model.consensus[consensus_id]
        before, voted_before = c.status, agent_id in c.ballots
        credential = self.credential_of(agent_id)
        refusal = self.model.authorize(agent_id, credential, agent_id, "vote")
        outcome = refusal or self.model.vote(c, agent_id, choice, reason)
        fields = {"agentId": agent_id, "vote": choice}
        if reason is not None:
            fields["reason"] = reason
        url = f"{C}/consensus/{consensus_id}/vote"
        response = self._send(refusal, lambda: self.request("POST", url, json=fields, headers=bearer(credential)))
        body = self.expect(response, outcome)
        if outcome.code is None:
            self.check_consensus(c, body)
        elif outcome.code == "consensus_closed":
            self.status_seen[consensus_id].append(body["consensusStatus"])
        what = outcome.code or ("repeat" if voted_before else "counted")
        if outcome.code == "not_eligible":
            what += f" ({outcome.members['why']})"
        by = " (human)" if agent_id in self.model.humans else ""
        self.seen(f"vote:{what}{by}" + (f" -> {c.status}" if c.status != before else ""))
        self.seen_decision(c, before)

    @rule(
        consensus_id=requests,
        name=st.one_of(st.none(), names),
        choice=st.sampled_from(["approve", "reject"]),
        reason=vote_reasons,
    )
    def vote(self, consensus_id: str, name: str | None, choice: str, reason: str | None) -> None:
        """A vote by the agent named (registered or not), or (None) by the requester."""
        c = self.model.consensus[consensus_id]
        self._vote(consensus_id, c.requester if name is None else self.model.agent_id(name), choice, reason)

    @precondition(lambda self: self._peers("any"))
    @rule(
        kind=st.sampled_from(["any", "voted"]),
        choice=st.sampled_from(["approve", "reject"]),
        reason=vote_reasons,
        data=st.data(),
    )
    def vote_as_peer(self, kind: str, choice: str, reason: str | None, data: st.DataObject) -> None:
        """A registered agent other than the requester votes: counted, too late, refused
        as inactive, or (voted) again: the same vote or a changed one."""
        consensus_id, agent_id = data.draw(st.sampled_from(self._peers(kind) or self._peers("any")), label="vote")
        self._vote(consensus_id, agent_id, choice, reason)

    @precondition(lambda self: self._peers("lapsed"))
    @rule(choice=st.sampled_from(["approve", "reject"]), data=st.data())
    def vote_while_lapsed(self, choice: str, data: st.DataObject) -> None:
        """A lapsed peer that has not voted tries to vote on a pending request."""
        consensus_id, agent_id = data.draw(st.sampled_from(self._peers("lapsed")), label="vote")
        self._vote(consensus_id, agent_id, choice, None)

    @precondition(lambda self: self._peers("outsider"))
    @rule(kind=st.sampled_from(["outsider", "role"]), choice=st.sampled_from(["approve", "reject"]), data=st.data())
    def vote_from_outside(self, kind: str, choice: str, data: st.DataObject) -> None:
        """An active agent outside a pending request's electorate (registered after it was
        made, lapsed and back since, or, preferably if there is one (role), of none of
        its policy's voter roles) tries to vote: 403 not_eligible, nothing counted.
        This is how a consensus would be stacked."""
        outsiders = self._peers(kind) or self._peers("outsider")
        consensus_id, agent_id = data.draw(st.sampled_from(outsiders), label="vote")
        self._vote(consensus_id, agent_id, choice, None)

    @precondition(lambda self: self._peers("counting"))
    @rule(choice=st.sampled_from(["approve", "reject"]), data=st.data())
    def vote_that_counts(self, choice: str, data: st.DataObject) -> None:
        """An active peer that has not voted votes on a pending request, so that requests
        get decided often enough to matter."""
        consensus_id, agent_id = data.draw(st.sampled_from(self._peers("counting")), label="vote")
        self._vote(consensus_id, agent_id, choice, None)

    @rule(consensus_id=requests, data=st.data())
    def read_consensus(self, consensus_id: str, data: st.DataObject) -> None:
        c = self.model.consensus[consensus_id]
        before = c.status
        c.settle()
        response = self.request("GET", f"{C}/consensus/{consensus_id}", headers=self._reader(data))
        self.check_consensus(c, self.expect(response, Outcome(200)))
        self.seen(f"read_consensus:{before}" + (f" -> {c.status}" if c.status != before else ""))
        self.seen_decision(c, before)

    def _human_votes(self, kind: str) -> list[tuple[str, str]]:
        """(request, human) pairs: every one ("any"), or on pending requests that ask for
        humans, those where the human's vote will count ("counting": registered before
        the request, yet to vote) or not ("later": registered after it)."""
        return [
            (c.id, human.id)
            for c in self.model.consensus.values()
            for human in self.model.humans.values()
            if kind == "any"
            or c.status == "pending"
            and c.policy.human_approvals
            and human.id not in c.ballots
            and (human.run < c.made) == (kind == "counting")
        ]

    @precondition(lambda self: self.model.humans and self.model.consensus)
    @rule(kind=st.sampled_from(["any", "later"]), choice=st.sampled_from(["approve", "reject"]), data=st.data())
    def vote_as_human(self, kind: str, choice: str, data: st.DataObject) -> None:
        """A human member votes with its credential on any request, or preferably (if
        there is one, later) on a pending one that asks for humans, registered after
        it: 403 not_eligible, why "human" (a request that asks for none) or "later";
        or counted, too late, or again."""
        pairs = self._human_votes(kind) or self._human_votes("any")
        consensus_id, human_id = data.draw(st.sampled_from(pairs), label="human vote")
        self._vote(consensus_id, human_id, choice, None)

    @precondition(lambda self: self._human_votes("counting"))
    @rule(choice=st.sampled_from(["approve", "approve", "reject"]), reason=vote_reasons, data=st.data())
    def human_vote_that_counts(self, choice: str, reason: str | None, data: st.DataObject) -> None:
        """A human member votes on a pending request that asks for humans, made after it
        was registered: counted (its rejection rejects at once)."""
        consensus_id, human_id = data.draw(st.sampled_from(self._human_votes("counting")), label="human vote")
        self._vote(consensus_id, human_id, choice, reason)
