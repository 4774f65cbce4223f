"""`concord suppressions ...`, run as subprocesses against a real `concord serve` on
a private redis-server: add, show, list and remove; a CSV import checked whole
before anything is sent, then sent in batches; an export that imports as it is.
What scripts rely on: one JSON document on stdout (or, for an export to stdout,
the CSV), one problem JSON on stderr, and the exit status.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from concord import protocol
from concord.cli import main
from tests.cli.test_main import SERVER_DEPENDENCIES, run_cli, server_modules
from tests.support.helpers import Stack, concord_env, running_stack

# Each test that counts what a tenant holds has a tenant of its own.
KEYS = {
    "acme": "acme-supp-key-0123456789",
    "bulk": "bulk-supp-key-0123456789",
    "strict": "strict-supp-key-0123456789",
    "plain": "plain-supp-key-0123456789",
}
GATE = "bulk-supp-gate-key-0123456789"  # the bulk tenant's email pipeline
REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 60
ROWS = 5000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys = ",".join([*(f"{tenant}:{key}" for tenant, key in KEYS.items()), f"bulk/gate:{GATE}"])
    with running_stack(tmp_path_factory.mktemp("cli-suppressions"), {"CONCORD_API_KEYS": keys}) as running:
        yield running


@pytest.fixture(scope="module")
def r(stack: Stack) -> Iterator[redis.Redis]:
    client = stack.redis.client()
    yield client
    client.close()


def settings_of(stack: Stack, tenant: str = "acme", key: str | None = None) -> dict[str, str]:
    return {"CONCORD_URL": stack.service.url, "CONCORD_API_KEY": key or KEYS[tenant]}


def concord(*args: str, settings: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`concord ARGS` with exactly these CONCORD_* settings, from the repository."""
    return subprocess.run(
        [sys.executable, "-m", "concord", *args],
        cwd=REPO,
        env=concord_env(settings),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def answer(run: subprocess.CompletedProcess[str], status: int = 0) -> Any:
    """The one JSON document on stdout of a run that exited with ``status`` and said nothing on stderr."""
    assert run.returncode == status, (run.returncode, run.stdout, run.stderr)
    assert run.stderr == "", run.stderr
    assert run.stdout.endswith("\n") and run.stdout.count("\n") == 1, run.stdout
    return json.loads(run.stdout)


def failure(run: subprocess.CompletedProcess[str], code: str, status: int = 1) -> dict[str, Any]:
    """The one problem JSON document on stderr of a run that failed with ``status``; stdout is empty."""
    assert run.returncode == status, (run.returncode, run.stdout, run.stderr)
    assert run.stdout == "", run.stdout
    assert run.stderr.count("\n") == 1, run.stderr
    problem = json.loads(run.stderr)
    assert problem["code"] == code and problem["type"] == f"urn:concord:problem:{code}", problem
    assert problem["title"] and problem["detail"], problem
    return problem


def register(stack: Stack, name: str, directory: Path, tenant: str = "acme") -> tuple[dict[str, Any], str]:
    """A new agent of ``tenant`` and the file its credential is saved in."""
    path = directory / f"{name}.cred"
    agent = answer(
        concord("agents", "register", name, "--save-credential", str(path), settings=settings_of(stack, tenant))
    )
    return agent, str(path)


def suppressions_key(stack: Stack, tenant: str) -> str:
    return stack.keys.suppressions(tenant)


# --- add, show, list, remove -----------------------------------------------------------


def test_an_agent_suppresses_a_contact_and_no_agent_may_lease_it(stack: Stack, r: redis.Redis, tmp_path: Path):
    env = settings_of(stack)
    sdr, sdr_file = register(stack, "sdr", tmp_path)
    rival, rival_file = register(stack, "rival", tmp_path)
    made = answer(
        concord(
            "suppressions",
            "add",
            " Alice+Promo@Example.com",
            "--reason",
            "unsubscribed",
            "--note",
            "replied: stop",
            "--credential-file",
            sdr_file,
            settings=env,
        )
    )
    assert made == {
        "entry": "alice@example.com",
        "tenantId": "acme",
        "reason": "unsubscribed",
        "note": "replied: stop",
        "createdAt": made["createdAt"],
        "createdBy": sdr["id"],
        "createdByRole": "agent",
    }
    held = r.hget(suppressions_key(stack, "acme"), "alice@example.com")
    assert held.startswith("unsubscribed|") and held.endswith(f"|agent|{sdr['id']}|replied: stop"), held
    assert answer(concord("suppressions", "show", "ALICE+x@example.com", settings=env)) == made
    as_rival = ("--credential-file", rival_file)
    assert answer(concord("suppressions", "list", "--limit", "10", *as_rival, settings=env)) == {
        "suppressions": [made],
        "nextCursor": None,
    }

    refused = failure(
        concord("lease", "acquire", *as_rival, "--contact", "alice@example.com", settings=env), "suppressed"
    )
    assert refused["status"] == 403 and refused["suppression"] == made and refused["contact"] == "alice@example.com"
    check = answer(concord("lease", "check", *as_rival, "--contact", "alice@example.com", settings=env), 3)
    assert (check["allowed"], check["reason"], check["suppression"]) == (False, "suppressed", made)

    # The agent finds it as it stands; an admin key (no credential given) replaces it.
    again = concord(
        "suppressions", "add", "alice@example.com", "--reason", "manual", "--credential-file", sdr_file, settings=env
    )
    assert answer(again) == made
    replaced = answer(concord("suppressions", "add", "alice@example.com", "--reason", "manual", settings=env))
    assert (replaced["reason"], replaced["createdByRole"], "note" in replaced) == ("manual", "admin", False)

    # Removing is an admin key's: an agent's process has none, and its credential sent as one is refused.
    alone = {"CONCORD_URL": stack.service.url, "CONCORD_AGENT_CREDENTIAL": Path(sdr_file).read_text().strip()}
    no_key = failure(concord("suppressions", "remove", "alice@example.com", settings=alone), "not_configured", 2)
    assert "CONCORD_API_KEY" in no_key["detail"], no_key
    as_key = {"CONCORD_URL": stack.service.url, "CONCORD_API_KEY": alone["CONCORD_AGENT_CREDENTIAL"]}
    scope = failure(concord("suppressions", "remove", "alice@example.com", settings=as_key), "insufficient_scope")
    assert (scope["status"], scope["keyRole"]) == (403, "agent"), scope
    assert r.hget(suppressions_key(stack, "acme"), "alice@example.com") is not None

    assert answer(concord("suppressions", "remove", "Alice@example.com", settings=env)) == replaced
    assert r.hget(suppressions_key(stack, "acme"), "alice@example.com") is None
    gone = failure(concord("suppressions", "show", "alice@example.com", settings=env), "suppression_not_found")
    assert gone["status"] == 404, gone
    failure(concord("suppressions", "remove", "alice@example.com", settings=env), "suppression_not_found")
    lease = answer(concord("lease", "acquire", *as_rival, "--contact", "alice@example.com", settings=env))
    assert lease["agentId"] == rival["id"], lease


def test_a_domain_suppressed_by_a_gate_key_binds_every_contact_at_it(stack: Stack, tmp_path: Path):
    gate = settings_of(stack, "bulk", GATE)
    made = answer(concord("suppressions", "add", "@BigCorp.com", "--reason", "complained", settings=gate))
    assert (made["entry"], made["createdByRole"]) == ("@bigcorp.com", "gate"), made
    _, agent_file = register(stack, "bulk-sdr", tmp_path, "bulk")
    refused = failure(
        concord("lease", "acquire", "--credential-file", agent_file, "--contact", "ceo@bigcorp.com", settings=gate),
        "suppressed",
    )
    assert refused["suppression"] == made and "the domain bigcorp.com" in refused["detail"], refused
    scope = failure(concord("suppressions", "remove", "@bigcorp.com", settings=gate), "insufficient_scope")
    assert scope["keyRole"] == "gate", scope
    answer(concord("suppressions", "remove", "@bigcorp.com", settings=settings_of(stack, "bulk")))


# --- import and export -------------------------------------------------------------------


def rows_file(path: Path, rows: list[list[str]], header: str = "entry,reason,note") -> Path:
    with path.open("w", newline="", encoding="utf-8") as out:
        out.write(header + "\n")
        csv.writer(out, lineterminator="\n").writerows(rows)
    return path


def read_export(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == ["entry", "reason", "note", "createdAt", "createdBy", "createdByRole"]
    return list(reader)


def test_import_of_5000_rows_in_one_command_and_an_export_that_imports_as_it_is(
    stack: Stack, r: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """The bulk tenant's gate key imports 5,000 rows in batches of 500; the export
    gives them back (set equal), and importing the export writes nothing new."""
    reasons = protocol.SuppressionReason.__args__
    rows, expected = [], set()
    for i in range(ROWS):
        entry = f"@d{i:05d}.test" if i % 50 == 0 else f"User{i:05d}+list@Example.org"
        reason = "" if i % 7 == 0 else reasons[i % len(reasons)]  # blank: --reason applies
        note = f'row {i}, "quoted"' if i % 3 == 0 else ""
        rows.append([entry, reason, note])
        expected.add((protocol.suppression_entry(entry), reason or "bounced", note))
    source = rows_file(tmp_path / "bulk.csv", rows)
    gate = settings_of(stack, "bulk", GATE)
    before = r.hlen(suppressions_key(stack, "bulk"))

    started = time.perf_counter()
    run = concord("suppressions", "import", str(source), "--reason", "bounced", settings=gate)
    seconds = time.perf_counter() - started
    assert answer(run) == {"received": ROWS, "written": ROWS, "batches": ROWS // protocol.MAX_SUPPRESSIONS_PER_CALL}
    with capsys.disabled():
        print(
            f"\nsuppressions import: {ROWS} rows in {seconds:.2f} s = {ROWS / seconds:,.0f} rows/s (the whole command)"
        )
    assert r.hlen(suppressions_key(stack, "bulk")) == before + ROWS
    reason, _, role, key_id, note = r.hget(suppressions_key(stack, "bulk"), "user00003@example.org").split("|", 4)
    assert (reason, role, note) == ("manual", "gate", 'row 3, "quoted"') and key_id

    exported = answer(concord("suppressions", "export", str(tmp_path / "out.csv"), settings=gate))
    assert exported == {"exported": before + ROWS, "file": str(tmp_path / "out.csv")}
    lines = read_export((tmp_path / "out.csv").read_text(encoding="utf-8"))
    assert {(line["entry"], line["reason"], line["note"]) for line in lines} >= expected
    assert len(lines) == before + ROWS
    assert [line["entry"] for line in lines] == sorted(line["entry"] for line in lines)
    assert {(line["createdByRole"], line["createdBy"], bool(line["createdAt"])) for line in lines} == {
        ("gate", key_id, True)
    }
    to_stdout = concord("suppressions", "export", settings=gate)
    assert (to_stdout.returncode, to_stdout.stderr) == (0, ""), to_stdout
    assert to_stdout.stdout == (tmp_path / "out.csv").read_text(encoding="utf-8")

    again = concord("suppressions", "import", "-", settings=gate, stdin=to_stdout.stdout)  # from stdin
    batches = -(-len(lines) // protocol.MAX_SUPPRESSIONS_PER_CALL)
    assert answer(again) == {"received": len(lines), "written": 0, "batches": batches}  # every entry kept as it was


def test_a_bad_row_is_refused_with_its_line_before_anything_is_sent(stack: Stack, r: redis.Redis, tmp_path: Path):
    env = settings_of(stack, "strict")
    rows = [[f"ok{i}@example.net", "manual", ""] for i in range(1200)]
    rows[801] = ["not-an-address", "manual", ""]  # line 803: the header is line 1
    rows[1098] = ["ok@example.net", "because", ""]  # line 1100
    rows[1150] = ["ok@example.net", "manual", "x" * 201]  # line 1152
    path = rows_file(tmp_path / "bad.csv", rows)
    problem = failure(concord("suppressions", "import", str(path), settings=env), "invalid_argument", 2)
    assert problem["line"] == 803 and problem["invalidRows"] == 3, problem
    assert problem["detail"].startswith(f"{path}, line 803: entry 'not-an-address' is not an email address, or @ and")
    assert "Nothing was sent" in problem["detail"] and "2 more" in problem["detail"], problem
    assert [error["line"] for error in problem["errors"]] == [803, 1100, 1152]
    assert "unsubscribed, bounced, complained, manual" in problem["errors"][1]["detail"], problem
    assert "at most 200" in problem["errors"][2]["detail"], problem
    assert r.exists(suppressions_key(stack, "strict")) == 0  # nothing was sent, not even the good batches


@pytest.mark.parametrize(
    "content, line, says",
    [
        ("", 1, "the file is empty"),
        ("email,reason\na@example.net,manual\n", 1, "unknown column 'email'"),
        ("reason,note\nmanual,x\n", 1, "no entry column"),
        ("entry,entry\na@example.net,b@example.net\n", 1, "a column named twice"),
        ('entry,reason\na@example.net,manual\n"b@example.net,manual\n', 3, "unexpected end of data"),
    ],
)
def test_a_malformed_file_is_refused_naming_its_line(
    stack: Stack, r: redis.Redis, tmp_path: Path, content: str, line: int, says: str
):
    path = tmp_path / "malformed.csv"
    path.write_text(content)
    problem = failure(
        concord("suppressions", "import", str(path), settings=settings_of(stack, "strict")), "invalid_argument", 2
    )
    assert problem["line"] == line and says in problem["detail"], problem
    assert r.exists(suppressions_key(stack, "strict")) == 0


def test_an_agent_imports_with_its_credential_and_blank_lines_and_a_bom_are_no_rows(
    stack: Stack, r: redis.Redis, tmp_path: Path
):
    agent, agent_file = register(stack, "plain-importer", tmp_path, "plain")
    path = tmp_path / "agent.csv"
    path.write_bytes("\ufeffentry,note\n\nbob@example.net,said stop\n  @Spam.test  ,\n\n".encode())
    env = settings_of(stack, "plain")
    assert answer(concord("suppressions", "import", str(path), "--credential-file", agent_file, settings=env)) == {
        "received": 2,
        "written": 2,
        "batches": 1,
    }
    assert r.hget(suppressions_key(stack, "plain"), "bob@example.net").endswith(f"|agent|{agent['id']}|said stop")
    assert r.hget(suppressions_key(stack, "plain"), "@spam.test").startswith("manual|")
    empty = tmp_path / "header-only.csv"
    empty.write_text("entry,reason,note\n")
    assert answer(concord("suppressions", "import", str(empty), settings=env)) == {
        "received": 0,
        "written": 0,
        "batches": 0,
    }
    missing = failure(
        concord("suppressions", "import", str(tmp_path / "nothing.csv"), settings=env), "invalid_argument", 2
    )
    assert "cannot be read" in missing["title"] and "nothing.csv" in missing["detail"], missing


# --- usage, help, and `pip install concord` alone -------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["suppressions", "add", "alice@example.com"], "--reason"),
        (["suppressions", "add", "not-an-address", "--reason", "manual"], "or @ and a domain"),
        (["suppressions", "add", "@not a domain", "--reason", "manual"], "or @ and a domain"),
        (["suppressions", "add", "a@example.com", "--reason", "because"], "invalid choice"),
        (["suppressions", "add", "a@example.com", "--reason", "manual", "--note", "x" * 201], "at most 200"),
        (["suppressions", "import", "a.csv", "--reason", "because"], "invalid choice"),
        (["suppressions", "export", "/no/such/directory/out.csv"], "cannot write"),
    ],
)
def test_usage_errors_exit_2_and_say_what_is_wrong(args: list[str], says: str):
    run = concord(*args, settings={"CONCORD_API_KEY": KEYS["acme"]})
    assert run.returncode == 2 and run.stdout == "", run
    assert "usage: concord suppressions" in run.stderr and says in run.stderr, run.stderr


def test_help_of_every_subcommand_shows_examples(capsys: pytest.CaptureFixture[str]):
    for command in ("add", "show", "list", "remove", "import", "export"):
        with pytest.raises(SystemExit) as exited:
            main(["suppressions", command, "--help"])
        out = capsys.readouterr().out
        assert exited.value.code == 0, command
        assert out.startswith(f"usage: concord suppressions {command}"), out
        assert f"concord suppressions {command} " in out.partition("\nexamples:\n")[2], out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "suppressions" in capsys.readouterr().out


def test_the_commands_import_nothing_of_the_server(stack: Stack, tmp_path: Path):
    """As `pip install concord` alone has them: the server's dependencies cannot be imported."""
    env = settings_of(stack, "plain")
    path = rows_file(tmp_path / "few.csv", [["carol@example.net", "bounced", ""]])
    for args in (
        ["suppressions", "--help"],
        ["suppressions", "add", "dave@example.net", "--reason", "manual"],
        ["suppressions", "import", str(path)],
        ["suppressions", "show", "carol@example.net"],
        ["suppressions", "list"],
        ["suppressions", "export", str(tmp_path / "out.csv")],
        ["suppressions", "remove", "dave@example.net"],
    ):
        modules = tmp_path / "modules.json"
        run = run_cli(*args, refuse=SERVER_DEPENDENCIES, settings=env, modules=modules)
        assert run.returncode == 0 and "Traceback" not in run.stderr, (args, run.stdout, run.stderr)
        assert server_modules(modules) == [], args
