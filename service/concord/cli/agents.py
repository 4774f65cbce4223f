"""`concord agents ...`: register agents (printing each one's credential once),
rotate credentials, send heartbeats, list, show and remove agents."""

from __future__ import annotations

import argparse
from typing import Any

from concord.cli.common import (
    AGENT,
    KEY,
    Commands,
    api_command,
    group,
    json_object,
    page_options,
    save_credential,
    writable,
)


def add_parser(commands: Commands) -> None:
    agents = group(
        commands,
        "agents",
        "register agents, rotate their credentials, send heartbeats, list, show and remove agents",
        """
        concord agents register sdr-agent --role sdr --save-credential sdr.cred
        concord agents heartbeat --credential-file sdr.cred
        concord agents rotate agent_46cd8872-c53e-5977-9394-138a578fb9ee --save-credential sdr.cred
        concord agents list --status active
        concord agents show agent_46cd8872-c53e-5977-9394-138a578fb9ee
        concord agents remove agent_46cd8872-c53e-5977-9394-138a578fb9ee""",
    )
    p = api_command(
        agents,
        "register",
        "register an agent (again: update it) with the API key; prints the agent and its new credential",
        """
        concord agents register sdr-agent --role sdr --save-credential sdr.cred
        AGENT=$(concord agents register sdr-agent --save-credential sdr.cred | jq -r .id)
        export CONCORD_AGENT_CREDENTIAL=$(concord agents register sdr-agent | jq -r .credential)""",
        register,
        needs=KEY,
    )
    p.add_argument("name", metavar="NAME", help="agent name: 1-128 of A-Z a-z 0-9 . _ - (the name is its identity)")
    p.add_argument("--role", help='agent role (a new agent gets "general"; omitted keeps the current one)')
    p.add_argument("--metadata", type=json_object, metavar="JSON", help="a JSON object of at most 4 KiB")
    p.add_argument(
        "--human",
        action="store_const",
        const="human",
        dest="kind",
        help="register a human member (an admin key's): it votes where a consensus policy asks for human "
        "approvals, with its own credential, and needs no heartbeat",
    )
    save_option(p)
    p = api_command(
        agents,
        "rotate",
        "give an agent a new credential (the current one is refused from now on); prints it",
        """
        concord agents rotate "$AGENT" --save-credential sdr.cred
        concord agents rotate agent_46cd8872-c53e-5977-9394-138a578fb9ee | jq -r .credential""",
        rotate,
        needs=KEY,
    )
    p.add_argument("agent_id", metavar="AGENT_ID")
    save_option(p)
    p = api_command(
        agents,
        "heartbeat",
        "record a heartbeat, with the agent's credential: it stays active for the heartbeat window",
        """
        concord agents heartbeat --credential-file sdr.cred
        while sleep 60; do concord agents heartbeat >/dev/null; done   # CONCORD_AGENT_CREDENTIAL set""",
        lambda c, a: c.heartbeat(a.agent_id) if a.agent_id else c.me().heartbeat(),
        needs=AGENT,
    )
    p.add_argument("agent_id", metavar="AGENT_ID", nargs="?", help="default: the agent of the credential")
    p = api_command(
        agents,
        "list",
        "list agents, newest registration first",
        """
        concord agents list --status inactive --limit 20
        concord agents list --cursor "$(concord agents list --limit 20 | jq -r .nextCursor)\"""",
        lambda c, a: c.list_agents(status=a.status, limit=a.limit, cursor=a.cursor),
    )
    p.add_argument("--status", choices=("active", "inactive"))
    page_options(p)
    p = api_command(
        agents,
        "show",
        "show one agent",
        """
        concord agents show agent_46cd8872-c53e-5977-9394-138a578fb9ee | jq -r .status""",
        lambda c, a: c.get_agent(a.agent_id),
    )
    p.add_argument("agent_id", metavar="AGENT_ID")
    p = api_command(
        agents,
        "remove",
        "deregister an agent, revoke its credential and release its leases (an admin key)",
        """
        concord agents remove agent_46cd8872-c53e-5977-9394-138a578fb9ee""",
        lambda c, a: c.remove_agent(a.agent_id),
        needs=KEY,
    )
    p.add_argument("agent_id", metavar="AGENT_ID")


def save_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--save-credential",
        type=writable,
        metavar="FILE",
        help="write the new credential to FILE (mode 0600; for --credential-file) instead of printing it",
    )


def register(client: Any, args: argparse.Namespace) -> Any:
    """The registered agent with its new credential, or without it once saved to --save-credential."""
    from concord import protocol as p

    agent = client.register(args.name, role=args.role, metadata=args.metadata, kind=args.kind)
    if args.save_credential is not None:
        save_credential(args.save_credential, agent.credential)
        return agent.info
    fields = {name: getattr(agent.info, name) for name in p.Agent.__struct_fields__}
    return p.RegisteredAgent(**fields, credential=agent.credential)


def rotate(client: Any, args: argparse.Namespace) -> Any:
    rotated = client.rotate_credential(args.agent_id)
    if args.save_credential is None:
        return rotated
    save_credential(args.save_credential, rotated.credential)
    return {"agentId": rotated.agent_id, "rotatedAt": rotated.rotated_at}
