"""`concord serve`: run the HTTP API with uvicorn.

uvicorn and the server are imported only when the command runs, so the client
commands, which share this parser, never load them.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import TYPE_CHECKING

from concord.cli.common import Commands, server_missing

if TYPE_CHECKING:
    from concord.server.settings import Settings

GRACEFUL_SHUTDOWN_SECONDS = 5


def add_parser(commands: Commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the HTTP API",
        description="Run the HTTP API with uvicorn. Needs the server: pip install 'concord[server]'.",
    )
    serve.set_defaults(run=run)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (needs CONCORD_REDIS_URL above 1)")


def run(args: argparse.Namespace) -> int:
    try:
        # starlette and redis are the app's, imported by each worker: without this,
        # their absence would be a worker's traceback rather than one line here.
        import redis  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        from concord.server.settings import ConfigError, Settings
    except ImportError as exc:
        return server_missing("serve", exc, as_problem=False)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"concord: {exc}", file=sys.stderr)
        return 2
    return _serve(settings, args.host, args.port, args.workers)


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
            access_log=False,  # the app writes its own (server/http/observe.py, CONCORD_ACCESS_LOG)
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
