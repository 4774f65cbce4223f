"""`concord suppressions ...`: the contacts, and whole domains, that no agent may
lease or email: add, show, list, remove, and import and export them as CSV.

Adding and importing go with the agent's credential when one is given
(CONCORD_AGENT_CREDENTIAL or --credential-file: an agent that read "unsubscribe
me"), else with the API key (an admin key, or a pipeline's gate key); removing is
an admin key's. An import is checked whole before anything is sent: a bad row is
a usage error (exit 2) naming its line, and nothing is written. It is then sent
in batches of MAX_SUPPRESSIONS_PER_CALL, each one call (and one script) of the
service; running it again is safe, since an existing suppression is kept.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Iterator
from typing import IO, Any, get_args

from concord import protocol
from concord.cli.common import (
    EXIT_USAGE,
    KEY,
    Commands,
    api_command,
    call_api,
    fail,
    group,
    page_options,
    problem,
    redact,
    writable,
)

REASONS = get_args(protocol.SuppressionReason)
NOTE_MAX = 200  # protocol.types.Note
# The columns an import reads; an export's own columns besides them are ignored, so
# an export imports as it is. Any other column is refused (a typo must not be lost).
IMPORTED = ("entry", "reason", "note")
EXPORTED = (*IMPORTED, "createdAt", "createdBy", "createdByRole")
EXPORT_PAGE = 1000  # the most GET /suppressions gives at once
# The JSON a batch may carry: the service takes bodies of at most 64 KiB (the server's
# decoding.MAX_BODY_BYTES), and 500 rows with long entries and notes are more than that.
BATCH_BYTES = 60 * 1024
# How many invalid rows one refusal lists (the detail names the first).
SHOWN_ERRORS = 20


def add_parser(commands: Commands) -> None:
    suppressions = group(
        commands,
        "suppressions",
        "suppress contacts or whole domains (no agent may lease or email them): add, show, list, remove, "
        "import and export as CSV",
        """
        concord suppressions add alice@example.com --reason unsubscribed --credential-file sdr.cred
        CONCORD_API_KEY=$GATE_KEY concord suppressions add @bigcorp.com --reason complained --note "legal"
        concord suppressions import bounces.csv --reason bounced
        concord suppressions export suppressions.csv""",
    )
    p = api_command(
        suppressions,
        "add",
        "suppress a contact (any spelling of it) or @domain: no agent may lease or email it from now on",
        """
        concord suppressions add alice@example.com --reason unsubscribed --credential-file sdr.cred
        concord suppressions add @bigcorp.com --reason complained --note "asked by legal"   # the API key""",
        lambda c, a: acting(c).suppress(a.entry, a.reason, note=a.note),
    )
    entry_argument(p)
    p.add_argument("--reason", required=True, choices=REASONS, help="why it must not be emailed")
    p.add_argument("--note", type=note, metavar="TEXT", help=f"at most {NOTE_MAX} characters")
    p = api_command(
        suppressions,
        "show",
        "show the suppression of a contact or a domain",
        """
        concord suppressions show Alice+promo@example.com | jq -r .reason""",
        lambda c, a: c.get_suppression(a.entry),
    )
    entry_argument(p)
    p = api_command(
        suppressions,
        "list",
        "list the tenant's suppressions in the order of their entries (@domains first)",
        """
        concord suppressions list --limit 100
        concord suppressions list --cursor "$(concord suppressions list --limit 100 | jq -r .nextCursor)\"""",
        lambda c, a: c.list_suppressions(limit=a.limit, cursor=a.cursor),
    )
    page_options(p)
    p = api_command(
        suppressions,
        "remove",
        "lift the suppression of a contact or a domain (an admin key); prints what it was",
        """
        concord suppressions remove alice@example.com""",
        lambda c, a: c.lift_suppression(a.entry),
        needs=KEY,
    )
    entry_argument(p)
    p = api_command(
        suppressions,
        "import",
        f"suppress every row of a CSV file (entry,reason,note), in batches of {protocol.MAX_SUPPRESSIONS_PER_CALL}",
        """
        concord suppressions import unsubscribes.csv --reason unsubscribed
        concord suppressions export - | concord suppressions import - --credential-file sdr.cred""",
        send_batches,
    )
    p.set_defaults(run=run_import)
    p.add_argument(
        "file",
        metavar="FILE",
        help="a CSV file with a header row naming entry and optionally reason and note; - for stdin",
    )
    p.add_argument(
        "--reason",
        choices=REASONS,
        default="manual",
        help="the reason of a row without one (default manual)",
    )
    p = api_command(
        suppressions,
        "export",
        "write every suppression as CSV (entry,reason,note,createdAt,createdBy,createdByRole)",
        """
        concord suppressions export suppressions.csv     # prints {"exported": N, "file": ...}
        concord suppressions export | wc -l               # the CSV itself on stdout""",
        export,
    )
    p.add_argument("file", metavar="FILE", nargs="?", default="-", type=output_file, help="default -, stdout")


def entry_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("entry", type=entry, metavar="ENTRY", help="an email address, or @ and a domain")


def acting(client: Any) -> Any:
    """What adds suppressions: the agent whose credential the command was given, else the client (its API key)."""
    return client.me() if client.agent_credential else client


# --- argument types (a bad value is argparse's usage error, exit 2) ----------------


def entry(text: str) -> str:
    """An entry as given (the service canonicalizes it), once it has the shape of one."""
    try:
        protocol.suppression_entry(text)
    except protocol.FieldError:
        raise argparse.ArgumentTypeError(f"expected {protocol.SUPPRESSION_RULE}, got {text!r}") from None
    return text.strip()


def note(text: str) -> str:
    if len(text) > NOTE_MAX or "\x00" in text:
        raise argparse.ArgumentTypeError(f"expected at most {NOTE_MAX} characters (no NUL), got {len(text)}")
    return text


def output_file(text: str) -> str:
    return text if text == "-" else writable(text)


# --- import ------------------------------------------------------------------------


class RowError(Exception):
    """A line of an import that cannot be sent; ``line`` is its number, from 1 (the header)."""

    def __init__(self, line: int, detail: str) -> None:
        super().__init__(f"line {line}: {detail}")
        self.line = line
        self.detail = detail


def run_import(args: argparse.Namespace) -> int:
    """Read and check the whole file, then send it (call_api runs ``send_batches``)."""
    name = "stdin" if args.file == "-" else args.file
    try:
        with open_input(args.file) as source:
            rows, errors = read_rows(source, args.reason)
    except OSError as exc:
        return invalid("The CSV file cannot be read", f"{name}: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return invalid("The CSV file is not UTF-8", f"{name}: {exc}")
    except RowError as exc:  # the file itself is malformed: nothing after it can be read
        return invalid("The CSV file is malformed", f"{name}, {exc}", line=exc.line)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more invalid rows)" if len(errors) > 1 else ""
        return invalid(
            "Invalid CSV row",
            f"{name}, line {first.line}: {first.detail}{more}. Nothing was sent: correct the file and run it again",
            line=first.line,
            invalidRows=len(errors),
            errors=[{"line": error.line, "detail": error.detail} for error in errors[:SHOWN_ERRORS]],
        )
    args.rows = rows
    return call_api(args)


def invalid(title: str, detail: str, **extra: Any) -> int:
    return fail(problem("invalid_argument", title, detail, **extra), EXIT_USAGE)


def open_input(path: str) -> IO[str]:
    """The file to read, or stdin for ``-``; a byte-order mark (a spreadsheet's) is skipped."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_rows(source: IO[str], default_reason: str) -> tuple[list[dict[str, str]], list[RowError]]:
    """Every row of the CSV ``source`` as the body of a bulk import carries it, and
    the rows that cannot be (their line and what is wrong, in words). Raises RowError
    for a header or a line that cannot be read at all."""
    reader = csv.reader(source, strict=True)
    columns = check_header(next_fields(reader))
    rows, errors = [], []
    while (fields := next_fields(reader)) is not None:
        if not any(field.strip() for field in fields):
            continue  # a blank line
        try:
            rows.append(row(reader.line_num, fields, columns, default_reason))
        except RowError as exc:
            errors.append(exc)
    return rows, errors


def next_fields(reader: Any) -> list[str] | None:
    """The next record's fields (None at the end); RowError for one csv cannot read (a NUL, an open quote)."""
    try:
        return next(reader, None)
    except csv.Error as exc:
        raise RowError(max(reader.line_num, 1), str(exc)) from None


def check_header(header: list[str] | None) -> list[str]:
    expected = f"a header row naming entry, and optionally reason and note ({','.join(IMPORTED)})"
    if header is None:
        raise RowError(1, f"the file is empty: expected {expected}, then one row per entry")
    columns = [name.strip() for name in header]
    unknown = [name for name in columns if name not in EXPORTED]
    if unknown:
        what = f"unknown column {unknown[0]!r}"
    elif "entry" not in columns:
        what = "no entry column"
    elif len(set(columns)) != len(columns):
        what = "a column named twice"
    else:
        return columns
    raise RowError(1, f"{what} in the header {','.join(columns)!r}: expected {expected}")


def row(line: int, fields: list[str], columns: list[str], default_reason: str) -> dict[str, str]:
    """One row as a bulk import's entry, ``{entry, reason, note?}``; RowError if it cannot be one."""
    if len(fields) > len(columns):
        raise RowError(line, f"{len(fields)} fields, but the header names {len(columns)} columns")
    values = dict(zip(columns, fields, strict=False))  # a short row leaves its last columns empty
    raw = values.get("entry", "").strip()
    if not raw:
        raise RowError(line, "no entry: expected an email address, or @ and a domain")
    try:
        protocol.suppression_entry(raw)
    except protocol.FieldError:
        raise RowError(line, f"entry {raw!r} is not {protocol.SUPPRESSION_RULE}") from None
    reason = values.get("reason", "").strip() or default_reason
    if reason not in REASONS:
        raise RowError(line, f"reason {reason!r} is not one of {', '.join(REASONS)}")
    text = values.get("note", "")
    if len(text) > NOTE_MAX:
        raise RowError(line, f"the note is {len(text)} characters long: at most {NOTE_MAX}")
    return {"entry": raw, "reason": reason, "note": text} if text else {"entry": raw, "reason": reason}


def batches(rows: list[dict[str, str]]) -> Iterator[list[dict[str, str]]]:
    """The rows in order, in batches of at most MAX_SUPPRESSIONS_PER_CALL rows and
    BATCH_BYTES of JSON (a row is never more than a kilobyte)."""
    import msgspec

    batch: list[dict[str, str]] = []
    size = 0
    for item in rows:
        grows = len(msgspec.json.encode(item)) + 1  # and its comma
        if len(batch) == protocol.MAX_SUPPRESSIONS_PER_CALL or size + grows > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += grows
    if batch:
        yield batch


def send_batches(client: Any, args: argparse.Namespace) -> dict[str, int]:
    """Send the checked rows, batch by batch, in order; the totals. A batch refused
    after others were written says how far the import got (``imported``)."""
    from concord import ConcordError, Unreachable

    target = acting(client)
    done = {"received": 0, "written": 0, "batches": 0}
    for batch in batches(args.rows):
        try:
            answer = target.import_suppressions(batch)
        except ConcordError as exc:
            if not done["batches"]:
                raise
            if isinstance(exc, Unreachable):  # as common.unreachable says it, with the progress
                url = redact(client.url)
                said = problem(
                    "unreachable",
                    "Concord is unreachable",
                    f"No answer from Concord at {url}: {exc.__cause__ or exc}",
                    url=url,
                )
                raise ConcordError(said["detail"], code="unreachable", problem={**said, "imported": done}) from exc
            exc.problem = {**exc.problem, "imported": done}
            raise
        done["received"] += answer.received
        done["written"] += answer.written
        done["batches"] += 1
    return done


# --- export --------------------------------------------------------------------------


def export(client: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """Write every suppression as CSV, page by page. To a FILE: in full or not at all
    (written beside it, then moved into place), and the count is printed; to stdout:
    the CSV is the output (None: nothing more to print)."""
    if args.file == "-":
        out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
        try:
            write_csv(client, out)
            out.flush()
        except BrokenPipeError:  # `concord suppressions export | head`: the reader has all it wants
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        finally:
            out.detach()
        return None
    temporary = f"{args.file}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as out:
            count = write_csv(client, out)
        os.replace(temporary, args.file)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return {"exported": count, "file": args.file}


def write_csv(client: Any, out: IO[str]) -> int:
    """The header and one line per suppression; how many were written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORTED)
    count, cursor = 0, None
    while True:
        page = client.list_suppressions(limit=EXPORT_PAGE, cursor=cursor)
        for s in page.suppressions:
            writer.writerow([s.entry, s.reason, s.note or "", s.created_at, s.created_by, s.created_by_role])
        count += len(page.suppressions)
        cursor = page.next_cursor
        if cursor is None:
            return count
