"""`concord keys create|list|revoke`: API keys stored in Redis.

Redis keeps only each key's SHA-256 (concord.server.store.apikeys); a key is
printed once, when it is created. The server is imported only when the command
runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from concord.cli.common import Commands, server_missing

if TYPE_CHECKING:
    from concord.server.settings import Settings


def add_parser(commands: Commands) -> None:
    keys = commands.add_parser(
        "keys", help="create, list or revoke API keys stored in Redis", description="API keys stored in Redis."
    )
    keys.set_defaults(run=run)
    key_commands = keys.add_subparsers(dest="key_command", required=True, metavar="KEYS_COMMAND")
    create = key_commands.add_parser("create", help="create a key for a tenant and print it (once)")
    create.add_argument("--tenant", required=True, help="tenant id: 1-64 of A-Z a-z 0-9 _ -")
    revoke = key_commands.add_parser("revoke", help="revoke a key, given as itself or as its sha256")
    revoke.add_argument("key", help="the API key, or its sha256 hex as `concord keys list` shows it")
    key_commands.add_parser("list", help="list the sha256 and tenant of every stored key")


def run(args: argparse.Namespace) -> int:
    try:
        import redis  # noqa: F401 (what _keys needs: a missing extra is said here, in one line)

        from concord.server.settings import ConfigError, Settings
    except ImportError as exc:
        return server_missing("keys", exc)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"concord: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_keys(settings, args))


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from concord.server.redis.connect import connect
    from concord.server.settings import TENANT_RE
    from concord.server.store import Store
    from concord.server.store.keys import Keys

    if settings.redis_url is None:
        print(
            "concord: keys are stored in Redis; set CONCORD_REDIS_URL. (The embedded store of "
            "`concord serve` lives inside that process and prints its own demo key.)",
            file=sys.stderr,
        )
        return 2
    if args.key_command == "create" and not TENANT_RE.fullmatch(args.tenant):
        print(f"concord: tenant {args.tenant!r} must be 1-64 of A-Z a-z 0-9 _ -", file=sys.stderr)
        return 2
    client = connect(settings)
    try:
        store = Store(client, Keys(settings.key_prefix), settings.heartbeat_window_seconds)
        if args.key_command == "create":
            print(await store.apikeys.create(args.tenant))
            print(f"Created an API key for tenant {args.tenant!r}. It is shown only now.", file=sys.stderr)
        elif args.key_command == "revoke":
            tenant = await store.apikeys.revoke(args.key)
            if tenant is None:
                print("concord: no such key", file=sys.stderr)
                return 1
            print(f"Revoked a key of tenant {tenant!r}.", file=sys.stderr)
        else:
            for digest, tenant in sorted((await store.apikeys.all()).items(), key=lambda item: (item[1], item[0])):
                print(f"{digest}  {tenant}")
    except RedisError as exc:
        print(f"concord: Redis at CONCORD_REDIS_URL failed: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    return 0
