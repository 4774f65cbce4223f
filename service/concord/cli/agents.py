"""`concord agents ...`: register agents, send heartbeats, list, show and remove them."""

from __future__ import annotations

from concord.cli.common import Commands, api_command, group, json_object, page_options


def add_parser(commands: Commands) -> None:
    agents = group(
        commands,
        "agents",
        "register agents, send heartbeats, list, show and remove agents",
        """
        concord agents register sdr-agent --role sdr --metadata '{"team": "emea"}'
        concord agents heartbeat agent_46cd8872-c53e-5977-9394-138a578fb9ee
        concord agents list --status active
        concord agents show agent_46cd8872-c53e-5977-9394-138a578fb9ee
        concord agents remove agent_46cd8872-c53e-5977-9394-138a578fb9ee""",
    )
    p = api_command(
        agents,
        "register",
        "register an agent (again: update it); prints the agent",
        """
        concord agents register sdr-agent --role sdr
        AGENT=$(concord agents register sdr-agent | jq -r .id)""",
        lambda c, a: c.register(a.name, role=a.role, metadata=a.metadata).info,
    )
    p.add_argument("name", metavar="NAME", help="agent name: 1-128 of A-Z a-z 0-9 . _ - (the name is its identity)")
    p.add_argument("--role", help='agent role (a new agent gets "general"; omitted keeps the current one)')
    p.add_argument("--metadata", type=json_object, metavar="JSON", help="a JSON object of at most 4 KiB")
    p = api_command(
        agents,
        "heartbeat",
        "record a heartbeat: the agent stays active for the heartbeat window",
        """
        concord agents heartbeat agent_46cd8872-c53e-5977-9394-138a578fb9ee
        while sleep 60; do concord agents heartbeat "$AGENT" >/dev/null; done""",
        lambda c, a: c.heartbeat(a.agent_id),
    )
    p.add_argument("agent_id", metavar="AGENT_ID")
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
        "deregister an agent and release its leases",
        """
        concord agents remove agent_46cd8872-c53e-5977-9394-138a578fb9ee""",
        lambda c, a: c.remove_agent(a.agent_id),
    )
    p.add_argument("agent_id", metavar="AGENT_ID")
