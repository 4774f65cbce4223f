"""What every `concord` command shares: its output, its exit statuses, its argument
types and the way its parsers are built.

The contract scripts rely on (docs/cli.md documents it):

- stdout carries exactly one JSON document on success: the API's answer as the
  API sends it (or, for `inspect` and `keys`, what was read or written). Compact
  on one line when stdout is a pipe or a file, indented when it is a terminal.
  (`suppressions export` without a FILE writes its CSV there instead.)
- stderr carries exactly one problem JSON document on failure: the API's own
  problem, or one made here (code ``unreachable``, ``not_configured``,
  ``not_installed``, ``invalid_argument``, ``redis_error``, ``key_not_found``) in
  the same shape. (`serve` is the one exception: a server, it says what stops it
  in one line of text.)
- Exit status: 0 done; 1 the API (or Redis) answered an error, or did not answer;
  2 a usage error (argparse's own, a missing/malformed setting, or a server
  command without the server extra); 3 `lease check` answered "not allowed" (its
  JSON is still on stdout).

The API commands (agents, lease, consensus) go through the sync SDK client
(concord.client.Concord), with CONCORD_URL, CONCORD_API_KEY (a tenant API key:
registering, rotating, deregistering, a forced release, reads) and the agent's
credential (CONCORD_AGENT_CREDENTIAL, or the file ``--credential-file`` names:
what acts as the agent; an API key never does). A secret is never an argument:
argv is visible to every user of the machine.

This module imports nothing of the server, and nothing beyond the standard library
at import time: `concord --help` and the client commands load only what they use.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
CONSENSUS_STATUSES = ("pending", "approved", "rejected", "expired")
# Top-level modules that only `pip install 'concord[server]'` brings (pyproject.toml):
# an ImportError naming one of them means the extra is missing; any other is a bug.
SERVER_DEPENDENCIES = frozenset(
    {"redis", "starlette", "uvicorn", "fakeredis", "lupa", "uvloop", "httptools", "hiredis"}
)
INSTALL_SERVER = "pip install 'concord[server]'"


# --- output ----------------------------------------------------------------------


def emit(document: Any) -> None:
    """Write one JSON document (a msgspec Struct or plain data) and a newline to stdout."""
    import msgspec

    data = msgspec.json.encode(document)
    if sys.stdout.isatty():
        data = msgspec.json.format(data, indent=2)
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()


def fail(document: dict[str, Any], status: int = EXIT_ERROR) -> int:
    """Write one problem JSON document to stderr; return the exit status."""
    sys.stderr.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")
    return status


def problem(code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A problem made by the command itself, in the API's shape (RFC 9457). It has no
    ``status``: no HTTP answer stands behind it."""
    return {"type": f"urn:concord:problem:{code}", "title": title, "detail": detail, "code": code, **extra}


def unreachable(what: str, url: str, error: object) -> int:
    return fail(problem("unreachable", f"{what} is unreachable", f"No answer from {what} at {url}: {error}", url=url))


def redact(url: str) -> str:
    """``url`` without its password, so a problem can name the URL safely."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}"))


def server_missing(command: str, exc: ImportError, as_problem: bool = True) -> int:
    """Say in one line on stderr that `concord COMMAND` needs the server extra, as a
    problem JSON (code ``not_installed``) or, for `serve`, as text; return exit 2.

    Call it from ``except ImportError`` around a server command's imports. An
    ImportError of anything but a server dependency is re-raised: a bug in our own
    imports must still show its traceback, not a wrong hint."""
    if (exc.name or "").partition(".")[0] not in SERVER_DEPENDENCIES:
        raise exc
    says = f"concord {command} needs the server: {INSTALL_SERVER}"
    if not as_problem:
        print(says, file=sys.stderr)
        return EXIT_USAGE
    return fail(problem("not_installed", "The server is not installed", f"{says} ({exc})"), EXIT_USAGE)


def redis_settings(command: str, needs_redis: str, tenant: str | None = None) -> Any:
    """The service's settings (CONCORD_*) for a command that reads Redis directly,
    with CONCORD_REDIS_URL set and ``tenant`` (when given) a valid tenant id; or,
    after printing the problem that stops the command, its exit status (an int)."""
    try:
        import redis  # noqa: F401 (what the command needs: a missing extra is said here, in one line)

        from concord.server.settings import TENANT_RE, ConfigError, Settings
    except ImportError as exc:
        return server_missing(command, exc)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return fail(problem("not_configured", "A setting is malformed", str(exc)), EXIT_USAGE)
    if settings.redis_url is None:
        return fail(problem("not_configured", f"No Redis for {command}", needs_redis), EXIT_USAGE)
    if tenant is not None and not TENANT_RE.fullmatch(tenant):
        return fail(
            problem("invalid_argument", "Invalid tenant", f"--tenant {tenant!r}: expected 1-64 of A-Z a-z 0-9 _ -"),
            EXIT_USAGE,
        )
    return settings


# --- argument types (a bad value is argparse's usage error, exit 2) ----------------


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object such as \'{{"team": "emea"}}\', got {text!r}')
    return value


def contact(text: str) -> str:
    """The contact as keys carry it: trimmed, lower-cased and canonical
    (protocol.normalize_email, protocol.canonical_contact)."""
    from concord.protocol import FieldError, canonical_contact, normalize_email

    try:
        return canonical_contact(normalize_email(text))
    except FieldError:
        raise argparse.ArgumentTypeError(f"expected an email address (local@domain.tld, ASCII), got {text!r}") from None


def agent_id(text: str) -> str:
    if not re.fullmatch(r"agent_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text):
        raise argparse.ArgumentTypeError(f"expected an agent id (agent_<uuid>), got {text!r}")
    return text


# --- building parsers --------------------------------------------------------------

Commands = argparse._SubParsersAction
# A leaf's handler: the parsed arguments in, the exit status out.
Run = Callable[[argparse.Namespace], int]


def examples(text: str) -> str:
    """An ``examples:`` epilog from an indented block, one command a line (a line
    starting with ``--`` continues the one before it)."""
    lines = [line.strip() for line in text.strip("\n").splitlines()]
    return "examples:\n" + "\n".join(f"  {line}" if not line.startswith("--") else f"      {line}" for line in lines)


def command(commands: Commands, name: str, help: str, example_text: str, **options: Any) -> argparse.ArgumentParser:
    """A command whose description is its help as a sentence, with examples below."""
    return commands.add_parser(
        name,
        help=help,
        description=options.pop("description", help[0].upper() + help[1:] + "."),
        epilog=examples(example_text),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **options,
    )


def group(commands: Commands, name: str, help: str, example_text: str, **options: Any) -> Commands:
    """A command group (`concord NAME COMMAND`); its subcommand is required."""
    parser = command(commands, name, help, example_text, **options)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=positive, metavar="N", help="page size, 1-1000 (default 100)")
    parser.add_argument("--cursor", metavar="C", help="the nextCursor of the previous page")


# --- the API commands ----------------------------------------------------------------


# What an API command's call goes with (the SDK picks the token; calls.py):
KEY = "key"  # the API key (register, rotate, remove, a forced release)
AGENT = "agent"  # the agent's own credential (heartbeat, leases, consensus)
GATE = "gate"  # send-check: the agent's credential, or a gate/admin key naming the agent with --agent
READ = "read"  # either


def api_command(
    commands: Commands,
    name: str,
    help: str,
    example_text: str,
    call: Callable[[Any, argparse.Namespace], Any],
    exit_status: Callable[[Any], int] | None = None,
    needs: str | Callable[[argparse.Namespace], str] = READ,
) -> argparse.ArgumentParser:
    """A command that makes one SDK call, ``call(client, args)``, and prints its answer;
    ``exit_status(answer)`` decides the exit status of an answer (default 0). ``needs``
    (or ``needs(args)``) is the credential it goes with: every command but a key's
    takes ``--credential-file``."""
    parser = command(commands, name, help, example_text)
    parser.set_defaults(run=call_api, call=call, exit_status=exit_status or (lambda _: EXIT_OK), needs=needs)
    if needs != KEY:
        parser.add_argument(
            "--credential-file",
            metavar="FILE",
            help="read the agent's credential from FILE (default: CONCORD_AGENT_CREDENTIAL)",
        )
    return parser


def agent_of(client: Any, args: argparse.Namespace) -> str:
    """The agent a command acts as: --agent, else the agent whose credential it was given."""
    return args.agent or client.me().id


def not_configured(title: str, detail: str) -> int:
    return fail(problem("not_configured", title, detail), EXIT_USAGE)


NO_CREDENTIAL = (
    "an agent acts only with its own credential, never with an API key. Set CONCORD_AGENT_CREDENTIAL to it, "
    "or give --credential-file FILE: `concord agents register NAME` prints it (or saves it, "
    "with --save-credential FILE)"
)


def credential(args: argparse.Namespace) -> tuple[str | None, int | None]:
    """The agent credential of a command (--credential-file, else CONCORD_AGENT_CREDENTIAL),
    or None; else, after printing the problem that stops the command, its exit status."""
    from concord.client.errors import credential_agent

    path = getattr(args, "credential_file", None)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as file:
                token, source = file.read().strip(), f"--credential-file {path}"
        except (OSError, UnicodeDecodeError) as exc:
            return None, not_configured("The credential file cannot be read", f"--credential-file {path}: {exc}")
        if not token:
            return None, not_configured("The credential file is empty", f"--credential-file {path} is empty")
    else:
        token, source = os.environ.get("CONCORD_AGENT_CREDENTIAL", "").strip(), "CONCORD_AGENT_CREDENTIAL"
        if not token:
            return None, None
    if credential_agent(token) is None:
        return None, not_configured(
            "Malformed agent credential",
            f"{source} is not an agent credential (concord-agent.<tenant>.<agentId>.<secret>): give it "
            "exactly as `concord agents register` printed it (its credential member)",
        )
    return token, None


def call_api(args: argparse.Namespace) -> int:
    """Run the SDK call of an api_command; return its exit status."""
    url = os.environ.get("CONCORD_URL") or DEFAULT_URL
    if not _is_http_url(url):
        return not_configured(
            "CONCORD_URL is malformed", f"CONCORD_URL={url!r}: expected http://host[:port] or https://host[:port]"
        )
    agent_credential, status = credential(args)
    if status is not None:
        return status
    api_key = os.environ.get("CONCORD_API_KEY", "")
    needs = args.needs(args) if callable(args.needs) else args.needs
    if needs == GATE:  # send-check names its agent with a key; without --agent only the agent's credential can
        needs = READ if args.agent else AGENT
    if needs == KEY and not api_key:
        return not_configured(
            "No API key",
            "Set CONCORD_API_KEY to an API key of the tenant (an admin key; an enroll key may register and "
            f"rotate): the service at {url} answers this command with 401 without one",
        )
    if needs == AGENT and not agent_credential:
        return not_configured("No agent credential", f"This command acts as an agent: {NO_CREDENTIAL}")
    if needs == READ and not (api_key or agent_credential):
        return not_configured(
            "No credential",
            "Set CONCORD_API_KEY to an API key of the tenant, or CONCORD_AGENT_CREDENTIAL (or --credential-file) "
            f"to an agent's credential: the service at {url} answers every /v1 request with 401 without one",
        )
    from concord import Concord, ConcordError, NotConfigured, Unreachable

    try:
        with Concord(url=url, api_key=api_key, agent_credential=agent_credential or "") as concord:
            answer = args.call(concord, args)
    except Unreachable as exc:  # after the SDK's retries
        return unreachable("Concord", redact(url), exc.__cause__ or exc)
    except NotConfigured as exc:
        return fail(exc.problem, EXIT_USAGE)
    except ConcordError as exc:
        return fail(exc.problem)
    except KeyboardInterrupt:  # Ctrl-C, typically during `consensus wait`: no traceback
        return 130
    if answer is not None:  # None: the command wrote its own output (`suppressions export` to stdout)
        emit(answer)
    return args.exit_status(answer)


def save_credential(path: str | None, secret: str) -> None:
    """Write ``secret`` to ``path``, readable by its owner only (0600), replacing the
    file at once (a reader sees the old credential or the new, never half of one).
    Raises ConcordError (code ``credential_not_saved``) when it cannot."""
    if path is None:
        return
    from concord import ConcordError

    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(secret + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        if os.path.exists(temporary):
            os.unlink(temporary)
        detail = (
            f"The new credential could not be written to {path} ({exc}); it is shown nowhere else. "
            "Run the command again with a path you can write: it makes a new credential"
        )
        saved = problem("credential_not_saved", "The credential was not saved", detail)
        raise ConcordError(detail, code="credential_not_saved", problem=saved) from exc


def writable(path: str) -> str:
    """An argparse type: a file path whose directory exists and can be written to."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write a file at {path!r}")
    return path


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: it raises on a malformed one
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
