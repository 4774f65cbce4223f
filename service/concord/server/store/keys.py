"""The key schema: the only place Concord builds Redis key names.

Every key of a tenant is ``<prefix>:{<tenant>}:<kind>[:<id>]``. The braces are
the Redis Cluster hash tag: Cluster hashes only what is inside the first ``{…}``,
so all of one tenant's keys share one slot and every script, which touches
several of them, runs on one shard. Tenant ids cannot contain braces and the
prefix is checked to have none, so a ``{`` inside a contact address that comes
later in the key cannot move the tag.

========================================  ======  ===================================================
key                                       type    contents (TTL)
========================================  ======  ===================================================
<p>:{t}:agent:<agentId>                   hash    id agentName agentRole metadata registeredAt
                                                  updatedAt credential (SHA-256 hex of its
                                                  current credential), kind (only "human" is
                                                  written) (none; removed by DELETE)
<p>:{t}:agents                            zset    agentId -> registeredAt ms (none)
<p>:{t}:heartbeats                        zset    agentId -> last heartbeat ms, Redis time; holds
                                                  exactly the registered agents (none)
<p>:{t}:active-since                      zset    agentId -> when its current run of activity
                                                  began, µs: the active agents (and those lapsed
                                                  since the last sweep), which fixes each
                                                  request's electorate (none)
<p>:{t}:lapse-mark                        string  "<ms>:<window ms>": active-since holds no agent
                                                  that had lapsed at <ms> (none)
<p>:{t}:humans                            zset    humanId -> registeredAt µs: the human members (none)
<p>:{t}:agent-roles                       hash    agentId -> agentRole, of every agent (none)
<p>:{t}:lease:<contact>                   string  "<agent uuid>|fencingToken|acquiredAt|agentName|
                                                  intent" (the holder without "agent_"), set NX
                                                  with its expiry (PXAT)
<p>:{t}:leases:<agent tag>                hash    fencingToken -> "expiresAt:contact", one per lease
                                                  of the agent: finds a lease by id and lists an
                                                  agent's leases; checked against the lease on
                                                  read (expires with its last lease)
<p>:{t}:fence                             string  the last fencing token granted (none)
<p>:{t}:consensus:<consId>                hash    id requestingAgentId action contactEmail reason
                                                  status createdAt expiresAt resolvedAt
                                                  electorateAt (µs), policy, and once
                                                  resolved eligible needed (7 days past
                                                  expiresAt, or past resolvedAt once decided)
<p>:{t}:consensus:<consId>:votes          hash    agentId (a human's: "h:" agentId) ->
                                                  "vote|votedAt µs|agentName|reason" (as its request)
<p>:{t}:consensus:<consId>:electorate     set     the agent members, under a policy with voter
                                                  roles (as its request)
<p>:{t}:consensus-policies                hash    action -> "rule|minVotes|humanApprovals|updatedAt|
                                                  updatedBy|roles, one per line" (none)
<p>:{t}:consensus-list:<all|status>       zset    consId -> createdAt ms, one list per status
                                                  and one of all (pruned after 14 days)
<p>:{t}:consensus-due                     zset    pending consId -> expiresAt ms (none)
<p>:{t}:idempotency:<sha256 of key>       hash    fingerprint, and the first answer's consensus
                                                  fields with eligible needed (24 hours)
<p>:{t}:events                            stream  the tenant's events, one entry per state change:
                                                  type and its fields (capped near
                                                  CONCORD_EVENTS_MAX_LENGTH entries; none)
<p>:{t}:suppressions                      hash    entry (a canonical contact, or "@domain") ->
                                                  "reason|setAt|setByRole|setBy|note" (none;
                                                  removed by an admin's DELETE)
<p>:{t}:suppression-index                 zset    every entry of suppressions at score 0, for
                                                  paging in order (BYLEX) (none)
<p>:{t}:quotas                            hash    the quotas an admin set for the tenant: agents
                                                  leasesPerAgent pendingConsensus streams; a
                                                  missing field is the deployment's default (none)
<p>:{t}:rate                              hash    tokens at: the tenant's rate-limit bucket
                                                  (until it would be full again)
<p>:{t}:rate:agent:<agentId>              hash    tokens at: one agent's bucket, drawn from by its
                                                  own credential's calls only (likewise)
<p>:apikeys                               hash    sha256(api key) hex -> its grant as JSON, and
                                                  id:<key id> -> that digest (none; not
                                                  tenant-scoped, one slot of its own)
========================================  ======  ===================================================

Times are Unix milliseconds of Redis's clock; contacts appear in their canonical
form (trimmed, lower-cased, sub-address dropped, Gmail's dots removed:
protocol.canonical_contact), so ``redis-cli GET 'concord:{acme}:lease:alice@example.com'``
shows the lease of every spelling of that address.
"""

from __future__ import annotations

import uuid

# Agent ids are UUIDv5 of "<tenant>/<agentName>" in this namespace: the name is the
# agent's identity, so two registrations of one name can only ever meet on one key.
AGENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:concord:agent")


def agent_id_for(tenant: str, agent_name: str) -> str:
    return f"agent_{uuid.uuid5(AGENT_NAMESPACE, f'{tenant}/{agent_name}')}"


def agent_tag(agent_id: str) -> str:
    """The first 64 bits of an agent's uuid, as 16 hex digits: the agent's part of its
    lease ids, and the name of its lease registry."""
    return agent_id[len("agent_") :].replace("-", "")[:16]


def lease_id(agent_id: str, fencing_token: int) -> str:
    """A lease's id: its holder's tag and its fencing token, 128 bits in UUID form.

    The token alone identifies the grant (tokens are unique in a tenant); the tag
    says whose registry holds the lease's contact. So an id finds its lease without
    a key of its own, and a lease extended by its holder keeps its id."""
    h = f"{agent_tag(agent_id)}{fencing_token:016x}"
    return f"lease_{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_lease_id(lease_id: str) -> tuple[str, int]:
    """(agent tag, fencing token) of a lease id of the right shape."""
    h = lease_id[len("lease_") :].replace("-", "")
    return h[:16], int(h[16:], 16)


def new_id(kind: str) -> str:
    """A fresh random id such as ``lease_<uuid4>`` or ``cons_<uuid4>``."""
    return f"{kind}_{uuid.uuid4()}"


class Keys:
    """Builds the key names of one deployment (one prefix)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "concord") -> None:
        self.prefix = prefix

    def tenant(self, tenant: str) -> str:
        """The start of every key of ``tenant``. "{tenant}" is the Cluster hash tag:
        it pins every key of the tenant to one slot."""
        return f"{self.prefix}:{{{tenant}}}"

    def agent(self, tenant: str, agent_id: str) -> str:
        return f"{self.tenant(tenant)}:agent:{agent_id}"

    def agents(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:agents"

    def heartbeats(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:heartbeats"

    def active_since(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:active-since"

    def lapse_mark(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:lapse-mark"

    def humans(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:humans"

    def agent_roles(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:agent-roles"

    def consensus_policies(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:consensus-policies"

    def lease(self, tenant: str, contact: str) -> str:
        return f"{self.tenant(tenant)}:lease:{contact}"

    def lease_registry(self, tenant: str, tag: str) -> str:
        """The lease registry of the agent(s) with this tag (see agent_tag). Two agents
        of a tenant share a tag with a chance of about 2^-64 per pair; they would then
        share a registry, whose entries are always checked against the leases."""
        return f"{self.tenant(tenant)}:leases:{tag}"

    def fence(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:fence"

    def consensus(self, tenant: str, consensus_id: str) -> str:
        return f"{self.tenant(tenant)}:consensus:{consensus_id}"

    def votes(self, tenant: str, consensus_id: str) -> str:
        return f"{self.tenant(tenant)}:consensus:{consensus_id}:votes"

    def electorate(self, tenant: str, consensus_id: str) -> str:
        return f"{self.tenant(tenant)}:consensus:{consensus_id}:electorate"

    def consensus_list(self, tenant: str, status: str = "all") -> str:
        return f"{self.tenant(tenant)}:consensus-list:{status}"

    def consensus_due(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:consensus-due"

    def suppressions(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:suppressions"

    def suppression_index(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:suppression-index"

    def events(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:events"

    def quotas(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:quotas"

    def rate_bucket(self, tenant: str, agent_id: str | None = None) -> str:
        if agent_id is None:
            return f"{self.tenant(tenant)}:rate"
        return f"{self.tenant(tenant)}:rate:agent:{agent_id}"

    def idempotency(self, tenant: str, key_digest: str) -> str:
        return f"{self.tenant(tenant)}:idempotency:{key_digest}"

    def api_keys(self) -> str:
        return f"{self.prefix}:apikeys"
