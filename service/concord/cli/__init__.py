"""The ``concord`` command: run the service, manage API keys."""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys

from concord.server.settings import TENANT_RE, ConfigError, Settings

EXAMPLES = """\
examples:
  concord serve                                   # embedded store, prints a demo API key
  CONCORD_REDIS_URL=redis://localhost:6379 concord serve --workers 4
  CONCORD_REDIS_URL=redis://localhost:6379 concord keys create --tenant acme
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="concord",
        description="Coordination for fleets of AI agents: agents, heartbeats, contact leases, consensus votes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP API", description="Run the HTTP API with uvicorn.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (needs CONCORD_REDIS_URL above 1)")

    keys = commands.add_parser(
        "keys", help="create, list or revoke API keys stored in Redis", description="API keys stored in Redis."
    )
    key_commands = keys.add_subparsers(dest="key_command", required=True, metavar="KEYS_COMMAND")
    create = key_commands.add_parser("create", help="create a key for a tenant and print it (once)")
    create.add_argument("--tenant", required=True, help="tenant id: 1-64 of A-Z a-z 0-9 _ -")
    revoke = key_commands.add_parser("revoke", help="revoke a key, given as itself or as its sha256")
    revoke.add_argument("key", help="the API key, or its sha256 hex as `concord keys list` shows it")
    key_commands.add_parser("list", help="list the sha256 and tenant of every stored key")

    from concord.cli.inspect import add_commands, is_ours, run_command  # agents, lease, consensus, inspect

    add_commands(parser, commands)
    args = parser.parse_args(argv)
    if is_ours(args):
        return run_command(args)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"concord: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(settings, args.host, args.port, args.workers)
    return asyncio.run(_keys(settings, args))


GRACEFUL_SHUTDOWN_SECONDS = 5


def _serve(settings: Settings, host: str, port: int, workers: int) -> int:
    import os
    import shutil
    import signal
    import tempfile

    import uvicorn

    if workers < 1:
        print("concord: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 and settings.redis_url is None:
        print(
            f"concord: --workers {workers} needs CONCORD_REDIS_URL: the embedded store lives inside one "
            "process, so several workers would each have their own and disagree. Run one worker, or point "
            "CONCORD_REDIS_URL at a Redis.",
            file=sys.stderr,
        )
        return 2
    # Each worker leaves its metrics snapshot here and /metrics sums them all
    # (docs/observability.md): a private directory for this run, unless the operator
    # gave one. Workers, restarted ones too, find it in their inherited environment.
    own_metrics_dir = None
    if settings.metrics_dir is None:
        own_metrics_dir = tempfile.mkdtemp(prefix="concord-metrics-")
        os.environ["CONCORD_METRICS_DIR"] = own_metrics_dir

        def remove_then_die(signum: int, frame: object) -> None:
            # With one worker, uvicorn shuts down gracefully on SIGTERM and then raises
            # it again under the handler found before it started, this one: remove the
            # directory, then end by the signal as before.
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

        signal.signal(signal.SIGTERM, remove_then_die)
    try:
        uvicorn.run(
            "concord.server.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=_log_config(settings.log_level),
            log_level=settings.log_level,
            access_log=False,  # the app writes its own (service/observe.py, CONCORD_ACCESS_LOG)
            # Event streams and long polls do not end by themselves: on shutdown they get
            # this long, then are cut (clients resume with Last-Event-ID, or poll again).
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    finally:
        if own_metrics_dir is not None:
            os.environ.pop("CONCORD_METRICS_DIR", None)
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
    return 0


def _log_config(level: str) -> dict:
    """uvicorn's logging, with the ``concord`` logger going to the same place."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["concord"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from concord.server.redis.connect import connect
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


if __name__ == "__main__":
    sys.exit(main())
