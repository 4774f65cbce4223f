"""The ``concord`` command: run the service, manage API keys, and use the API from a
shell. One module per command group; each adds its parser with ``add_parser`` and
sets ``run``, the function that runs its commands (common.py holds what they share).

The group modules import nothing of the server at import time: the client commands
and ``--help`` must work with ``pip install concord`` alone, so `serve`, `keys` and
`inspect` import the server inside ``run``.
"""

from __future__ import annotations

import argparse
import sys

from concord import __version__
from concord.cli import agents, consensus, inspect, keys, lease, serve, suppressions

# The order of `concord --help`.
GROUPS = (serve, keys, agents, lease, suppressions, consensus, inspect)

EXAMPLES = """\
examples:
  concord serve                                   # embedded store, prints a demo API key
  CONCORD_REDIS_URL=redis://localhost:6379 concord serve --workers 4
  CONCORD_REDIS_URL=redis://localhost:6379 concord keys create --tenant acme

  export CONCORD_URL=http://127.0.0.1:8080 CONCORD_API_KEY=ck_...
  concord agents register sdr-agent --role sdr --save-credential sdr.cred   # the agent's credential, once
  concord lease acquire --credential-file sdr.cred --contact alice@example.com --duration 600
  concord lease check --credential-file sdr.cred --contact alice@example.com && send-the-email
  concord suppressions add alice@example.com --reason unsubscribed --credential-file sdr.cred
  concord suppressions import bounces.csv --reason bounced       # with a gate or admin key
  CONCORD_AGENT_CREDENTIAL=$(cat sdr.cred) concord consensus request --action send_pricing_override
  CONCORD_REDIS_URL=redis://localhost:6379 concord inspect --tenant acme --contact alice@example.com

An agent acts only with its own credential (CONCORD_AGENT_CREDENTIAL or --credential-file),
never with an API key; the key registers, rotates, removes and reads.
Every command prints one JSON document on stdout (`suppressions export` to stdout: its CSV);
errors are problem JSON on stderr (`serve` logs, and says what stops it in one line).
Exit status: 0 done, 1 error answer or service unreachable, 2 usage, 3 `lease check` refused.
`serve`, `keys` and `inspect` need the server: pip install 'concord[server]'.
"""


def parser() -> argparse.ArgumentParser:
    """The `concord` parser: every group's commands; each leaf's ``run`` runs it."""
    root = argparse.ArgumentParser(
        prog="concord",
        description="Coordination for fleets of AI agents: agents, heartbeats, contact leases, suppressions, "
        "consensus votes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The installed distribution's version (importlib.metadata, read in concord/__init__.py).
    root.add_argument("--version", action="version", version=f"concord {__version__}")
    # Not required: plain `concord` is someone finding out what it does, so it answers with the help.
    commands = root.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.add_parser(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    """Run `concord ARGV` (default: sys.argv); return the exit status."""
    root = parser()
    args = root.parse_args(argv)
    if args.command is None:
        root.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
