"""`concord consensus ...`: ask peers to vote on an action: request, vote, show, list,
wait. Requesting and voting go with the agent's credential (CONCORD_AGENT_CREDENTIAL
or --credential-file)."""

from __future__ import annotations

from concord.cli.common import (
    AGENT,
    CONSENSUS_STATUSES,
    Commands,
    agent_of,
    api_command,
    group,
    page_options,
    positive,
)


def add_parser(commands: Commands) -> None:
    consensus = group(
        commands,
        "consensus",
        "ask peers to vote on an action: request, vote, show, list, wait",
        """
        CONS=$(concord consensus request --credential-file sdr.cred --action send_pricing_override | jq -r .id)
        concord consensus vote "$CONS" approve --credential-file ret.cred --reason Qualified
        concord consensus wait "$CONS" --timeout 300 | jq -e '.status == "approved"' && send-the-offer""",
    )
    p = api_command(
        consensus,
        "request",
        "ask the tenant's active agents to vote on an action",
        """
        concord consensus request --action send_pricing_override \\
            --contact cto@bigcorp.com --reason "Custom pricing asked" --timeout 3600 --idempotency-key job-42""",
        lambda c, a: (
            c.request_consensus(
                agent_of(c, a),
                a.action,
                contact=a.contact,
                reason=a.reason,
                timeout=a.timeout,
                idempotency_key=a.idempotency_key,
            ).info
        ),
        needs=AGENT,
    )
    p.add_argument("--agent", metavar="AGENT_ID", help="the requesting agent (default: the agent of the credential)")
    p.add_argument("--action", required=True, help="what is to be decided, 1-128 characters")
    p.add_argument("--contact", metavar="EMAIL")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--timeout", type=positive, metavar="SECONDS", help="voting time, up to 7 days (default 3600)")
    p.add_argument("--idempotency-key", metavar="K", help="the same key again answers the first request")
    p = api_command(
        consensus,
        "vote",
        "cast an agent's vote (the same vote again changes nothing)",
        """
        concord consensus vote "$CONS" approve --credential-file ret.cred
        concord consensus vote "$CONS" reject --reason "Too early"      # CONCORD_AGENT_CREDENTIAL set""",
        lambda c, a: c.vote(a.consensus_id, agent_of(c, a), a.vote, reason=a.reason),
        needs=AGENT,
    )
    p.add_argument("consensus_id", metavar="CONSENSUS_ID")
    p.add_argument("vote", choices=("approve", "reject"))
    p.add_argument("--agent", metavar="AGENT_ID", help="the voter (default: the agent of the credential)")
    p.add_argument("--reason", metavar="TEXT")
    p = api_command(
        consensus,
        "show",
        "show a consensus request with its tally and votes",
        """
        concord consensus show "$CONS" | jq .tally""",
        lambda c, a: c.get_consensus(a.consensus_id),
    )
    p.add_argument("consensus_id", metavar="CONSENSUS_ID")
    p = api_command(
        consensus,
        "list",
        "list consensus requests, newest first",
        """
        concord consensus list --status pending""",
        lambda c, a: c.list_consensus(status=a.status, limit=a.limit, cursor=a.cursor),
    )
    p.add_argument("--status", choices=CONSENSUS_STATUSES)
    page_options(p)
    p = api_command(
        consensus,
        "wait",
        "wait until a request is decided (or the timeout passes); prints it",
        """
        concord consensus wait "$CONS" --timeout 300 | jq -r .status     # pending if undecided by then""",
        lambda c, a: c.wait_consensus(a.consensus_id, a.timeout),
    )
    p.add_argument("consensus_id", metavar="CONSENSUS_ID")
    p.add_argument("--timeout", type=positive, default=60, metavar="SECONDS", help="default 60")
