"""Consensus policies: what decides a request for each action of a tenant.

Each tenant keeps its policies in ``<p>:{t}:consensus-policies`` (a hash, action ->
policy as lib.lua policy_parse reads it). consensus_request reads the action's
entry in the same script that makes the request and copies it in, so a policy
costs no round trip and a change never moves a decision in flight. A change is
one script (lua/consensus_policy.lua) that also records it in the event stream.
"""

from __future__ import annotations

from concord.protocol import ConsensusPolicy, ConsensusPolicyBody, ConsensusPolicyList
from concord.server.principals import KeyGrant
from concord.server.store.context import Context
from concord.server.store.replies import iso, policy_rules


class ConsensusPolicies:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def get(self, tenant: str, action: str) -> ConsensusPolicy:
        """The policy in force for ``action``: the tenant's own, or the default."""
        return policy(tenant, action, await self.ctx.redis.hget(self.ctx.keys.consensus_policies(tenant), action))

    async def all(self, tenant: str) -> ConsensusPolicyList:
        """The tenant's own policies, by action."""
        stored = await self.ctx.redis.hgetall(self.ctx.keys.consensus_policies(tenant))
        return ConsensusPolicyList(policies=[policy(tenant, a, v) for a, v in sorted(stored.items())])

    async def set(self, tenant: str, action: str, body: ConsensusPolicyBody, key: KeyGrant) -> ConsensusPolicy:
        rules = f"{body.rule}|{body.min_votes}|{body.human_approvals}|{chr(10).join(body.voter_roles)}"
        return policy(tenant, action, await self._change(tenant, action, rules, key))

    async def delete(self, tenant: str, action: str, key: KeyGrant) -> ConsensusPolicy:
        """Forget the action's policy: the default applies to requests made from now on."""
        await self._change(tenant, action, "", key)
        return policy(tenant, action, None)

    async def _change(self, tenant: str, action: str, rules: str, key: KeyGrant) -> str:
        ctx = self.ctx
        reply = await ctx.scripts.consensus_policy(
            [ctx.keys.consensus_policies(tenant), ctx.keys.events(tenant)], [action, rules, ctx.events_max, key.id]
        )
        return reply[1]


def policy(tenant: str, action: str, stored: str | None) -> ConsensusPolicy:
    rules = policy_rules(stored)
    updated_at = updated_by = None
    if stored:
        _, _, _, at, updated_by, _ = stored.split("|", 5)
        updated_at = iso(at)
    return ConsensusPolicy(
        tenant_id=tenant,
        action=action,
        default=not stored,
        updated_at=updated_at,
        updated_by=updated_by,
        rule=rules.rule,
        voter_roles=rules.voter_roles,
        min_votes=rules.min_votes,
        human_approvals=rules.human_approvals,
    )
