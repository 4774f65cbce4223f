"""`concord keys create|list|revoke`: API keys stored in Redis.

Redis keeps only each key's SHA-256 (concord.server.store.apikeys), so `create`
is the one moment a key is shown. Like every other command, each prints one JSON
document on stdout and problems as problem JSON on stderr (common.py). The server
is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from concord.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    Commands,
    command,
    emit,
    fail,
    group,
    problem,
    redact,
    redis_settings,
    unreachable,
)

if TYPE_CHECKING:
    from concord.server.settings import Settings
    from concord.server.store.apikeys import ApiKeys


def add_parser(commands: Commands) -> None:
    keys = group(
        commands,
        "keys",
        "create, list or revoke API keys stored in Redis",
        """
        export CONCORD_REDIS_URL=redis://localhost:6379/0
        concord keys create --tenant acme | jq -r .apiKey   # the key, shown only now
        concord keys list | jq -r '.keys[] | select(.tenant == "acme") | .sha256'
        concord keys revoke ck_...                          # the key itself
        concord keys revoke 3f1a...                         # or its sha256, as `keys list` shows it""",
        description="API keys stored in Redis (CONCORD_REDIS_URL, and CONCORD_KEY_PREFIX as the service has it).\n"
        "Redis keeps only each key's sha256. Each command prints one JSON document on stdout;\n"
        "a problem is problem JSON on stderr. Exit status: 0 done, 1 Redis failed or no such key,\n"
        "2 usage, a missing/malformed setting, or no server installed (pip install 'concord[server]').",
    )
    p = command(
        keys,
        "create",
        "create a key for a tenant and print it (once)",
        """
        concord keys create --tenant acme
        API_KEY=$(concord keys create --tenant acme | jq -r .apiKey)""",
        description='Create an API key for a tenant and print {"tenant", "apiKey", "sha256"}.\n'
        "The key is shown only this once: Redis keeps only its sha256, so store it now (or create another).",
    )
    p.set_defaults(run=run, operation=_create)
    p.add_argument("--tenant", required=True, help="tenant id: 1-64 of A-Z a-z 0-9 _ -")
    p = command(
        keys,
        "list",
        "list the sha256 and tenant of every stored key",
        """
        concord keys list
        concord keys list | jq '.keys | length'""",
        description='Print {"keys": [{"sha256", "tenant"}, ...]}: every stored key, by tenant, then sha256.\n'
        "The keys themselves are not stored, so they cannot be listed.",
    )
    p.set_defaults(run=run, operation=_list)
    p = command(
        keys,
        "revoke",
        "revoke a key, given as itself or as its sha256",
        """
        concord keys revoke "$API_KEY"
        concord keys revoke "$(concord keys list | jq -r '.keys[0].sha256')\"""",
        description='Revoke a key, given as itself or as its sha256, and print {"revoked": true, "tenant"}.\n'
        "A key that is not stored is the problem key_not_found (exit 1). A running service may still\n"
        "accept a revoked key for up to a second: it caches what a key looked up.",
    )
    p.set_defaults(run=run, operation=_revoke)
    p.add_argument("key", metavar="KEY", help="the API key, or its sha256 hex as `concord keys list` shows it")


def run(args: argparse.Namespace) -> int:
    settings = redis_settings(
        "keys",
        "`concord keys` keeps keys in Redis: set CONCORD_REDIS_URL (and CONCORD_KEY_PREFIX if the service "
        "uses one) as the service has them. (The embedded store of `concord serve` lives inside that "
        "process and prints its own demo key.)",
        args.tenant if args.operation is _create else None,
    )
    if isinstance(settings, int):
        return settings
    return asyncio.run(_keys(settings, args))


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    """Run one keys command on the Redis of ``settings``; the client is closed whatever happens."""
    from redis.exceptions import ConnectionError, RedisError, TimeoutError

    from concord.server.redis.connect import connect
    from concord.server.store import Store
    from concord.server.store.keys import Keys

    assert settings.redis_url is not None  # run() refuses to go on without one
    url = redact(settings.redis_url)
    try:
        client = connect(settings)
    except ValueError as exc:  # a URL that passed the scheme check but not redis-py's parser
        return fail(
            problem("not_configured", "CONCORD_REDIS_URL is malformed", f"CONCORD_REDIS_URL={url!r}: {exc}"),
            EXIT_USAGE,
        )
    try:
        store = Store(client, Keys(settings.key_prefix), settings.heartbeat_window_seconds)
        answer = await args.operation(store.apikeys, args)
    except (ConnectionError, TimeoutError) as exc:
        return unreachable("Redis", url, exc)
    except RedisError as exc:
        return fail(problem("redis_error", "Redis refused a command", f"Redis at {url}: {exc}", url=url))
    finally:
        await client.aclose()
    if answer is None:
        # The argument is not echoed: it may be a live key, and stderr ends up in logs.
        return fail(
            problem(
                "key_not_found",
                "No such API key",
                f"No key stored in Redis at {url} under prefix {settings.key_prefix!r} is the given key or has it as "
                "its sha256; `concord keys list` shows the stored ones",
            ),
            EXIT_ERROR,
        )
    emit(answer)
    return EXIT_OK


async def _create(apikeys: ApiKeys, args: argparse.Namespace) -> dict[str, Any]:
    from concord.server.settings import key_digest

    api_key = await apikeys.create(args.tenant)
    return {"tenant": args.tenant, "apiKey": api_key, "sha256": key_digest(api_key)}


async def _list(apikeys: ApiKeys, args: argparse.Namespace) -> dict[str, Any]:
    stored = sorted((await apikeys.all()).items(), key=lambda item: (item[1], item[0]))
    return {"keys": [{"sha256": digest, "tenant": tenant} for digest, tenant in stored]}


async def _revoke(apikeys: ApiKeys, args: argparse.Namespace) -> dict[str, Any] | None:
    """None when no stored key is the given one or has it as its digest."""
    tenant = await apikeys.revoke(args.key)
    return None if tenant is None else {"revoked": True, "tenant": tenant}
