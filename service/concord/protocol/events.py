"""The event types of a tenant's stream, and the shape of an event id."""

from __future__ import annotations

import re

# Every event type; a family ("lease") selects all of its types in a filter.
EVENT_TYPES = (
    "agent.registered",
    "agent.removed",
    "agent.credential_rotated",
    "lease.acquired",
    "lease.renewed",
    "lease.released",
    "lease.taken_over",
    "consensus.requested",
    "consensus.voted",
    "consensus.resolved",
    "consensus.expired",
    "consensus.policy_set",
    "consensus.policy_deleted",
    "suppression.added",
    "suppression.removed",
    "suppression.imported",
)
FAMILIES = frozenset(t.partition(".")[0] for t in EVENT_TYPES)
# A stream id as a client may give it: "<ms>-<seq>", "<ms>", or "0" for the start.
STREAM_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
