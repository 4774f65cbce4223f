"""`concord lease ...`: acquire, renew, release, list and check contact leases."""

from __future__ import annotations

from concord.cli.common import EXIT_OK, EXIT_REFUSED, Commands, api_command, group, page_options, positive


def add_parser(commands: Commands) -> None:
    lease = group(
        commands,
        "lease",
        "acquire, renew, release, list and check contact leases",
        """
        LEASE=$(concord lease acquire --agent "$AGENT" --contact alice@example.com | jq -r .id)
        concord lease check --agent "$AGENT" --contact alice@example.com && send-the-email
        concord lease renew "$LEASE" --agent "$AGENT" --duration 600
        concord lease release "$LEASE" --agent "$AGENT\"""",
    )
    p = api_command(
        lease,
        "acquire",
        "take the exclusive lease on a contact (the holder asking again extends it)",
        """
        concord lease acquire --agent "$AGENT" --contact alice@example.com --duration 600 --intent outbound_sales""",
        lambda c, a: c.acquire_lease(a.agent, a.contact, duration=a.duration, intent=a.intent),
    )
    p.add_argument("--agent", required=True, metavar="AGENT_ID", help="the agent that takes the lease")
    p.add_argument("--contact", required=True, metavar="EMAIL", help="the contact (trimmed, lower-cased)")
    p.add_argument("--duration", type=positive, metavar="SECONDS", help="1-86400 (default 1800)")
    p.add_argument("--intent", metavar="TEXT", help="why, 1-64 characters (shown to agents that conflict)")
    p = api_command(
        lease,
        "renew",
        "move a lease's expiry to now + duration; its fencing token stays",
        """
        concord lease renew "$LEASE" --agent "$AGENT" --duration 600""",
        lambda c, a: c.renew_lease(a.lease_id, a.agent, duration=a.duration),
    )
    p.add_argument("lease_id", metavar="LEASE_ID")
    p.add_argument("--agent", required=True, metavar="AGENT_ID", help="the holder")
    p.add_argument("--duration", type=positive, metavar="SECONDS", help="1-86400 (default 1800)")
    p = api_command(
        lease,
        "release",
        "release a lease: the contact is free again",
        """
        concord lease release "$LEASE" --agent "$AGENT"     # only if $AGENT holds it
        concord lease release "$LEASE"                      # whoever holds it""",
        lambda c, a: c.release_lease(a.lease_id, agent_id=a.agent),
    )
    p.add_argument("lease_id", metavar="LEASE_ID")
    p.add_argument("--agent", metavar="AGENT_ID", help="release only if this agent holds the lease")
    p = api_command(
        lease,
        "show",
        "show one live lease",
        """
        concord lease show "$LEASE" | jq .expiresAt""",
        lambda c, a: c.get_lease(a.lease_id),
    )
    p.add_argument("lease_id", metavar="LEASE_ID")
    p = api_command(
        lease,
        "list",
        "list live leases of an agent and/or a contact, newest grant first",
        """
        concord lease list --agent "$AGENT"
        concord lease list --contact alice@example.com""",
        lambda c, a: c.list_leases(agent_id=a.agent, contact=a.contact, limit=a.limit, cursor=a.cursor),
    )
    p.add_argument("--agent", metavar="AGENT_ID")
    p.add_argument("--contact", metavar="EMAIL")
    page_options(p)
    p = api_command(
        lease,
        "check",
        "send-check: may this agent email this contact now? exit 0 yes, 3 no",
        """
        concord lease check --agent "$AGENT" --contact alice@example.com --fencing-token "$TOKEN" && send-the-email
        concord lease check --agent "$AGENT" --contact alice@example.com || echo "refused: exit $?\"""",
        lambda c, a: c.send_check(a.agent, a.contact, fencing_token=a.fencing_token),
        # A refusal is an answer, not an error: its JSON is on stdout, and the status lets `&&` gate the send.
        exit_status=lambda answer: EXIT_OK if answer.allowed else EXIT_REFUSED,
    )
    p.add_argument("--agent", required=True, metavar="AGENT_ID")
    p.add_argument("--contact", required=True, metavar="EMAIL")
    p.add_argument("--fencing-token", type=positive, metavar="N", help="also refuse unless N is the current token")
