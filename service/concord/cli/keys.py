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


KEY_ROLES = ("admin", "enroll", "gate", "read")  # concord.server.principals, without importing the server


def add_parser(commands: Commands) -> None:
    keys = group(
        commands,
        "keys",
        "create, list or revoke API keys stored in Redis",
        """
        export CONCORD_REDIS_URL=redis://localhost:6379/0
        concord keys create --tenant acme | jq -r .apiKey   # an admin key, shown only now
        concord keys create --tenant acme --role gate       # for an email pipeline: send-check only
        concord keys create --tenant acme --role enroll --roles sdr,support
        concord keys list | jq -r '.keys[] | select(.tenant == "acme") | .id'
        concord keys revoke key_3f1a0c2e9b7d4a10            # by id: the key itself never goes on a command line""",
        description="API keys stored in Redis (CONCORD_REDIS_URL, and CONCORD_KEY_PREFIX as the service has it).\n"
        "Each key has an id and a role: admin (everything), enroll (registers agents, of --roles only if\n"
        "given), gate (send-check only) or read (GET endpoints and the event stream). Redis keeps only each\n"
        "key's sha256. Each command prints one JSON document on stdout; a problem is problem JSON on stderr.\n"
        "Exit status: 0 done, 1 Redis failed or no such key, 2 usage, a missing/malformed setting, or no\n"
        "server installed (pip install 'concord[server]').",
    )
    p = command(
        keys,
        "create",
        "create a key for a tenant and print it (once)",
        """
        concord keys create --tenant acme
        API_KEY=$(concord keys create --tenant acme --role read | jq -r .apiKey)""",
        description='Create an API key and print {"id", "tenant", "role", "roles", "createdAt", "apiKey"}.\n'
        "The key is shown only this once: Redis keeps only its sha256, so store it now (or create another).",
    )
    p.set_defaults(run=run, operation=_create)
    p.add_argument("--tenant", required=True, help="tenant id: 1-64 of A-Z a-z 0-9 _ -")
    p.add_argument("--role", choices=KEY_ROLES, default="admin", help="what the key may do (default admin)")
    p.add_argument(
        "--roles",
        type=_roles,
        default=(),
        metavar="ROLE[,ROLE...]",
        help="with --role enroll: the agent roles it may register (default: any)",
    )
    p = command(
        keys,
        "list",
        "list the id, tenant, role and creation time of every stored key",
        """
        concord keys list
        concord keys list | jq '.keys | length'""",
        description='Print {"keys": [{"id", "tenant", "role", "roles", "createdAt"}, ...]}: every stored key, by\n'
        "tenant, then oldest first. The keys themselves are not stored, so they cannot be listed.",
    )
    p.set_defaults(run=run, operation=_list)
    p = command(
        keys,
        "revoke",
        "revoke a key by its id",
        """
        concord keys revoke key_3f1a0c2e9b7d4a10
        concord keys revoke "$(concord keys list | jq -r '.keys[0].id')\"""",
        description='Revoke a stored key by its id (`concord keys list` shows it) and print {"revoked": true, "id",\n'
        '"tenant", "role"}. An id that no stored key has is the problem key_not_found (exit 1). A running service\n'
        "may still accept a revoked key for up to a second: it caches what a key looked up. A key of\n"
        "CONCORD_API_KEYS (id cfg-<n>) is revoked by removing it there.",
    )
    p.set_defaults(run=run, operation=_revoke)
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id, key_<hex>, as `concord keys list` shows it")


def _roles(text: str) -> tuple[str, ...]:
    roles = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not roles or any(len(role) > 64 or not role.isprintable() for role in roles):
        raise argparse.ArgumentTypeError(
            f"expected agent roles separated by commas, each 1-64 characters, got {text!r}"
        )
    return roles


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
    if args.operation is _create and args.roles and args.role != "enroll":
        return fail(
            problem("invalid_argument", "--roles needs --role enroll", "--roles limits an enroll key only"), EXIT_USAGE
        )
    if args.operation is _revoke and not args.key_id.startswith("key_"):
        # Not echoed: it may be a live key, and stderr ends up in logs.
        detail = "Give the key's id (key_<hex>, as `concord keys list` shows it), not the key itself"
        if args.key_id.startswith("cfg-"):
            detail = "A key of CONCORD_API_KEYS (id cfg-<n>) is revoked by removing it from CONCORD_API_KEYS"
        return fail(problem("invalid_argument", "Not a stored key's id", detail), EXIT_USAGE)
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
        return fail(
            problem(
                "key_not_found",
                "No such API key",
                f"No key stored in Redis at {url} under prefix {settings.key_prefix!r} has the id "
                f"{args.key_id!r}; `concord keys list` shows the stored ones",
            ),
            EXIT_ERROR,
        )
    emit(answer)
    return EXIT_OK


async def _create(apikeys: ApiKeys, args: argparse.Namespace) -> dict[str, Any]:
    api_key, grant = await apikeys.create(args.tenant, args.role, args.roles)
    return {**_shown(grant), "apiKey": api_key}


async def _list(apikeys: ApiKeys, args: argparse.Namespace) -> dict[str, Any]:
    stored = sorted((grant for _, grant in await apikeys.all()), key=lambda g: (g.tenant, g.created_at or 0, g.id))
    return {"keys": [_shown(grant) for grant in stored]}


async def _revoke(apikeys: ApiKeys, args: argparse.Namespace) -> dict[str, Any] | None:
    """None when no stored key has the given id."""
    grant = await apikeys.revoke(args.key_id)
    return None if grant is None else {"revoked": True, "id": grant.id, "tenant": grant.tenant, "role": grant.role}


def _shown(grant: Any) -> dict[str, Any]:
    """A key's grant as the commands print it: its id, never the secret or its digest."""
    from concord.server.store.replies import iso

    created = iso(grant.created_at) if grant.created_at is not None else None
    return {
        "id": grant.id,
        "tenant": grant.tenant,
        "role": grant.role,
        "roles": list(grant.roles),
        "createdAt": created,
    }
