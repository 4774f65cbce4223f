"""`concord lease ...`: acquire, renew, release, list and check contact leases. The
commands that act as the holder go with its credential (CONCORD_AGENT_CREDENTIAL or
--credential-file); `lease check` may also be a gate key's, naming the agent."""

from __future__ import annotations

import argparse

from concord.cli.common import (
    AGENT,
    EXIT_OK,
    EXIT_REFUSED,
    GATE,
    KEY,
    Commands,
    agent_of,
    api_command,
    group,
    page_options,
    positive,
)


def add_parser(commands: Commands) -> None:
    lease = group(
        commands,
        "lease",
        "acquire, renew, release, list and check contact leases",
        """
        export CONCORD_AGENT_CREDENTIAL=$(cat sdr.cred)     # the holder's credential
        LEASE=$(concord lease acquire --contact alice@example.com | jq -r .id)
        concord lease check --contact alice@example.com && send-the-email
        concord lease renew "$LEASE" --duration 600
        concord lease release "$LEASE\"""",
    )
    p = api_command(
        lease,
        "acquire",
        "take the exclusive lease on a contact (the holder asking again extends it)",
        """
        concord lease acquire --contact alice@example.com --duration 600 --intent outbound_sales
        concord lease acquire --credential-file sdr.cred --contact alice@example.com""",
        lambda c, a: c.acquire_lease(agent_of(c, a), a.contact, duration=a.duration, intent=a.intent),
        needs=AGENT,
    )
    agent_option(p, "the agent that takes the lease")
    p.add_argument("--contact", required=True, metavar="EMAIL", help="the contact (trimmed, lower-cased)")
    p.add_argument("--duration", type=positive, metavar="SECONDS", help="1-86400 (default 1800)")
    p.add_argument("--intent", metavar="TEXT", help="why, 1-64 characters (shown to agents that conflict)")
    p = api_command(
        lease,
        "renew",
        "move a lease's expiry to now + duration; its fencing token stays",
        """
        concord lease renew "$LEASE" --duration 600""",
        lambda c, a: c.renew_lease(a.lease_id, agent_of(c, a), duration=a.duration),
        needs=AGENT,
    )
    p.add_argument("lease_id", metavar="LEASE_ID")
    agent_option(p, "the holder")
    p.add_argument("--duration", type=positive, metavar="SECONDS", help="1-86400 (default 1800)")
    p = api_command(
        lease,
        "release",
        "release a lease: the contact is free again",
        """
        concord lease release "$LEASE"                  # as its holder (its credential)
        concord lease release "$LEASE" --force          # whoever holds it (CONCORD_API_KEY, an admin key)""",
        lambda c, a: c.release_lease(a.lease_id, force=True) if a.force else c.release_lease(a.lease_id, a.agent),
        needs=lambda a: KEY if a.force else AGENT,
    )
    p.add_argument("lease_id", metavar="LEASE_ID")
    holder = p.add_mutually_exclusive_group()
    holder.add_argument("--agent", metavar="AGENT_ID", help="the holder (default: the agent of the credential)")
    holder.add_argument("--force", action="store_true", help="release it whoever holds it, with an admin key")
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
        concord lease check --contact alice@example.com --fencing-token "$TOKEN" && send-the-email
        concord lease check --agent "$AGENT" --contact alice@example.com || echo "refused: exit $?"   # a gate key""",
        lambda c, a: c.send_check(agent_of(c, a), a.contact, fencing_token=a.fencing_token),
        # A refusal is an answer, not an error: its JSON is on stdout, and the status lets `&&` gate the send.
        exit_status=lambda answer: EXIT_OK if answer.allowed else EXIT_REFUSED,
        needs=GATE,
    )
    p.add_argument(
        "--agent",
        metavar="AGENT_ID",
        help="the agent about to send (default: the agent of the credential; required with a gate key)",
    )
    p.add_argument("--contact", required=True, metavar="EMAIL")
    p.add_argument("--fencing-token", type=positive, metavar="N", help="also refuse unless N is the current token")


def agent_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--agent", metavar="AGENT_ID", help=f"{what} (default: the agent of the credential)")
