"""`concord agents|lease|consensus|inspect`, run as subprocesses against a real
`concord serve` on a private redis-server: what scripts rely on is one JSON
document on stdout, a problem JSON on stderr, and the exit status.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from concord.cli import main
from concord.server.store.keys import agent_tag
from tests.support.api import AGENT_ID, CONS_ID, LEASE_ID, V1, C, Fleet, bearer, unknown_id, verdict
from tests.support.helpers import Stack, concord_env, free_port, running_stack

TENANT, API_KEY = "acme", "acme-cli-key-0123456789"
# The tenant `inspect` looks at: its own, so agents of the other tests do not change its majorities.
QUIET, QUIET_KEY = "initech", "initech-cli-key-0123456789"
REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 60
LEASE_SECONDS = 600


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = {"CONCORD_API_KEYS": f"{TENANT}:{API_KEY},{QUIET}:{QUIET_KEY}"}
    with running_stack(tmp_path_factory.mktemp("cli"), settings) as running:
        yield running


@pytest.fixture(scope="module")
def r(stack: Stack) -> Iterator[redis.Redis]:
    client = stack.redis.client()
    yield client
    client.close()


def settings_of(stack: Stack) -> dict[str, str]:
    return {
        "CONCORD_URL": stack.service.url,
        "CONCORD_API_KEY": API_KEY,
        "CONCORD_REDIS_URL": stack.redis.url,
        "CONCORD_KEY_PREFIX": stack.keys.prefix,
    }


def concord(*args: str, settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`concord ARGS` with exactly these CONCORD_* settings, from the repository."""
    return subprocess.run(
        [sys.executable, "-m", "concord", *args],
        cwd=REPO,
        env=concord_env(settings),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def answer(run: subprocess.CompletedProcess[str], status: int = 0) -> Any:
    """The one JSON document on stdout of a run that exited with ``status`` and said nothing on stderr."""
    assert run.returncode == status, (run.returncode, run.stdout, run.stderr)
    assert run.stderr == "", run.stderr
    assert run.stdout.endswith("\n") and run.stdout.count("\n") == 1, run.stdout  # compact: a pipe is no terminal
    return json.loads(run.stdout)


def failure(run: subprocess.CompletedProcess[str], code: str, status: int = 1) -> dict[str, Any]:
    """The one problem JSON document on stderr of a run that failed with ``status``; stdout is empty."""
    assert run.returncode == status, (run.returncode, run.stdout, run.stderr)
    assert run.stdout == "", run.stdout
    problem = json.loads(run.stderr)
    assert problem["code"] == code and problem["type"] == f"urn:concord:problem:{code}", problem
    assert problem["title"] and problem["detail"], problem
    return problem


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# --- the API through the command line ---------------------------------------------------


def test_agents_leases_and_consensus_from_the_command_line(stack: Stack, tmp_path: Path):
    """The key registers; each agent then acts with its own credential, from
    CONCORD_AGENT_CREDENTIAL or a --credential-file, never from the command line."""
    env = settings_of(stack)
    sdr = answer(
        concord("agents", "register", unique("sdr"), "--role", "sdr", "--metadata", '{"team": "emea"}', settings=env)
    )
    assert AGENT_ID.fullmatch(sdr["id"]) and sdr["tenantId"] == TENANT and sdr["status"] == "active", sdr
    assert sdr["agentRole"] == "sdr" and sdr["metadata"] == {"team": "emea"}, sdr
    assert sdr["credential"].startswith(f"concord-agent.{TENANT}.{sdr['id']}."), sdr  # printed this once
    ret_file = tmp_path / "ret.cred"
    ret = answer(concord("agents", "register", unique("retention"), "--save-credential", str(ret_file), settings=env))
    assert ret["agentRole"] == "general" and "credential" not in ret, ret  # saved instead of printed
    assert (
        ret_file.read_text().startswith(f"concord-agent.{TENANT}.{ret['id']}.")
        and ret_file.stat().st_mode & 0o777 == 0o600
    )
    as_sdr = {**env, "CONCORD_AGENT_CREDENTIAL": sdr["credential"]}
    as_ret = ("--credential-file", str(ret_file))

    beat = answer(concord("agents", "heartbeat", settings=as_sdr))  # the agent of the credential
    assert beat["agentId"] == sdr["id"] and beat["status"] == "active", beat
    assert answer(concord("agents", "heartbeat", sdr["id"], settings=as_sdr))["agentId"] == sdr["id"]
    assert answer(concord("agents", "heartbeat", *as_ret, settings=env))["agentId"] == ret["id"]
    assert answer(concord("agents", "show", ret["id"], settings=env))["agentName"] == ret["agentName"]

    contact = f"{unique('alice')}@example.com"
    lease = answer(
        concord(
            "lease",
            "acquire",
            "--contact",
            f" {contact.upper()}",
            "--duration",
            str(LEASE_SECONDS),
            "--intent",
            "outbound_sales",
            settings=as_sdr,
        )
    )
    assert LEASE_ID.fullmatch(lease["id"]) and lease["agentId"] == sdr["id"], lease
    assert lease["contactEmail"] == contact and lease["intent"] == "outbound_sales", lease

    conflict = failure(concord("lease", "acquire", *as_ret, "--contact", contact, settings=env), "lease_conflict")
    assert conflict["status"] == 409 and conflict["leaseHolder"]["agentId"] == sdr["id"], conflict

    refused = answer(concord("lease", "check", *as_ret, "--contact", contact, settings=env), 3)
    assert refused["allowed"] is False and refused["reason"] == "lease_conflict", refused
    token = str(lease["fencingToken"])
    allowed = answer(concord("lease", "check", "--contact", contact, "--fencing-token", token, settings=as_sdr))
    assert verdict(allowed, contact) == {"allowed": True}
    # The email pipeline's way: a key (here the admin key) names the agent about to send.
    assert answer(concord("lease", "check", "--agent", sdr["id"], "--contact", contact, settings=env))["allowed"]

    renewed = answer(concord("lease", "renew", lease["id"], "--duration", "900", settings=as_sdr))
    assert renewed["id"] == lease["id"] and renewed["fencingToken"] == lease["fencingToken"], renewed
    listed = answer(concord("lease", "list", "--agent", sdr["id"], settings=env))
    assert [item["id"] for item in listed["leases"]] == [lease["id"]] and listed["nextCursor"] is None, listed
    assert answer(concord("lease", "show", lease["id"], settings=as_sdr))["expiresAt"] == renewed["expiresAt"]

    not_holder = failure(concord("lease", "release", lease["id"], *as_ret, settings=env), "not_lease_holder")
    assert not_holder["status"] == 403, not_holder
    released = answer(concord("lease", "release", lease["id"], settings=as_sdr))
    assert released["id"] == lease["id"] and released["released"] is True, released
    gone = failure(concord("lease", "show", lease["id"], settings=env), "lease_not_found")
    assert gone["status"] == 404, gone

    # Every other active agent of the tenant is eligible: here only `ret`, unless other
    # tests of the module ran first; then as many new voters again make a majority.
    request = answer(
        concord(
            "consensus",
            "request",
            "--action",
            "send_pricing_override",
            "--contact",
            contact,
            "--reason",
            "asked for custom pricing",
            "--timeout",
            "3600",
            settings=as_sdr,
        )
    )
    assert CONS_ID.fullmatch(request["id"]) and request["status"] == "pending", request
    assert request["requestingAgentId"] == sdr["id"] and request["contactEmail"] == contact, request
    assert request["reason"] == "asked for custom pricing", request
    eligible = request["tally"]["eligible"]
    voters = [as_ret] + [
        ("--credential-file", save(tmp_path, answer(concord("agents", "register", unique("voter"), settings=env))))
        for _ in range(eligible - 1)
    ]
    for voter in voters:
        voted = answer(
            concord("consensus", "vote", request["id"], "approve", *voter, "--reason", "qualified", settings=env)
        )
        if voted["status"] != "pending":
            break
    assert voted["status"] == "approved" and voted["tally"]["approve"] == voted["tally"]["needed"], voted
    shown = answer(concord("consensus", "show", request["id"], settings=env))
    assert shown["status"] == "approved" and shown["votes"][0]["reason"] == "qualified", shown
    assert shown["votes"][0]["agentId"] == ret["id"], shown
    assert answer(concord("consensus", "wait", request["id"], "--timeout", "5", settings=env))["status"] == "approved"

    closed = failure(concord("consensus", "vote", request["id"], "reject", *as_ret, settings=env), "already_voted")
    assert closed["status"] == 409 and closed["vote"] == "approve", closed


def save(directory: Path, registered: dict[str, Any]) -> str:
    """Write a registered agent's credential to a file of its own; its path."""
    path = directory / f"{registered['id']}.cred"
    path.write_text(registered["credential"])
    return str(path)


def test_wait_answers_a_request_still_pending_at_its_timeout(stack: Stack):
    env = settings_of(stack)
    requester = answer(concord("agents", "register", unique("asker"), settings=env))
    with httpx.Client(base_url=stack.service.url, headers=bearer(requester["credential"])) as http:
        created = http.post(f"{C}/consensus", json={"action": "pause"})
    assert created.status_code == 201, created.text
    waited = answer(concord("consensus", "wait", created.json()["id"], "--timeout", "1", settings=env))
    assert waited["id"] == created.json()["id"] and waited["status"] == "pending", waited


def test_lists_and_removal(stack: Stack):
    env = settings_of(stack)
    agent = answer(concord("agents", "register", unique("lister"), settings=env))
    page = answer(concord("agents", "list", "--status", "active", "--limit", "1", settings=env))
    assert [item["id"] for item in page["agents"]] == [agent["id"]] and page["nextCursor"], page  # newest first
    following = answer(concord("agents", "list", "--limit", "1000", "--cursor", page["nextCursor"], settings=env))
    assert agent["id"] not in [item["id"] for item in following["agents"]], following

    contact = f"{unique('bob')}@example.com"
    with httpx.Client(base_url=stack.service.url, headers=bearer(agent["credential"])) as http:
        lease = http.post(f"{C}/lease", json={"agentId": agent["id"], "contactEmail": contact}).json()
        pending = http.post(f"{C}/consensus", json={"requestingAgentId": agent["id"], "action": "list me"}).json()
    by_contact = answer(concord("lease", "list", "--contact", contact, settings=env))
    assert [item["id"] for item in by_contact["leases"]] == [lease["id"]], by_contact
    listed = answer(concord("consensus", "list", "--status", "pending", "--limit", "1", settings=env))
    assert [item["id"] for item in listed["consensus"]] == [pending["id"]], listed

    removed = answer(concord("agents", "remove", agent["id"], settings=env))
    assert removed == {"id": agent["id"], "removed": True, "releasedLeases": 1}
    missing = failure(concord("agents", "show", agent["id"], settings=env), "agent_not_found")
    assert missing["status"] == 404 and agent["id"] in missing["detail"], missing
    revoked = failure(  # removing it revoked its credential
        concord("agents", "heartbeat", settings={**env, "CONCORD_AGENT_CREDENTIAL": agent["credential"]}),
        "unauthorized",
    )
    assert revoked["status"] == 401, revoked


# --- credentials ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["agents", "heartbeat", unknown_id("agent")],
        ["lease", "acquire", "--agent", unknown_id("agent"), "--contact", "a@example.com"],
        ["lease", "renew", "lease_x", "--agent", unknown_id("agent")],
        ["lease", "release", "lease_x", "--agent", unknown_id("agent")],
        ["lease", "check", "--contact", "a@example.com"],  # with a key, send-check names its agent
        ["consensus", "request", "--agent", unknown_id("agent"), "--action", "pause"],
        ["consensus", "vote", "cons_x", "approve", "--agent", unknown_id("agent")],
    ],
)
def test_an_api_key_never_acts_as_an_agent_and_the_command_says_where_a_credential_comes_from(
    stack: Stack, args: list[str]
):
    problem = failure(concord(*args, settings=settings_of(stack)), "not_configured", status=2)
    assert problem["title"] == "No agent credential", problem
    for hint in ("never with an API key", "CONCORD_AGENT_CREDENTIAL", "--credential-file", "concord agents register"):
        assert hint in problem["detail"], problem


def test_a_credential_acts_only_as_its_own_agent(stack: Stack):
    env = settings_of(stack)
    sdr, ret = (answer(concord("agents", "register", unique(name), settings=env)) for name in ("sdr", "ret"))
    as_sdr = {**env, "CONCORD_AGENT_CREDENTIAL": sdr["credential"]}
    mismatch = failure(
        concord("lease", "acquire", "--agent", ret["id"], "--contact", "a@example.com", settings=as_sdr),
        "agent_mismatch",
    )
    assert mismatch["status"] == 403 and mismatch["agentId"] == sdr["id"], mismatch


def test_an_agent_process_reads_with_its_credential_and_registers_nothing(stack: Stack):
    env = settings_of(stack)
    agent = answer(concord("agents", "register", unique("alone"), settings=env))
    alone = {"CONCORD_URL": stack.service.url, "CONCORD_AGENT_CREDENTIAL": agent["credential"]}  # no API key
    assert answer(concord("agents", "show", agent["id"], settings=alone))["id"] == agent["id"]
    assert answer(concord("agents", "heartbeat", settings=alone))["agentId"] == agent["id"]
    problem = failure(concord("agents", "register", unique("more"), settings=alone), "not_configured", status=2)
    assert problem["title"] == "No API key" and "CONCORD_API_KEY" in problem["detail"], problem


def test_a_human_registered_from_the_command_line_only_votes(stack: Stack):
    env = settings_of(stack)
    human = answer(concord("agents", "register", unique("dana"), "--human", settings=env))
    assert human["kind"] == "human" and human["credential"].startswith("concord-human."), human
    as_human = {**env, "CONCORD_AGENT_CREDENTIAL": human["credential"]}
    refused = failure(concord("agents", "heartbeat", settings=as_human), "insufficient_scope")
    assert refused["status"] == 403 and refused["keyRole"] == "human", refused


def test_rotating_refuses_the_old_credential(stack: Stack, tmp_path: Path):
    env = settings_of(stack)
    path = tmp_path / "agent.cred"
    agent = answer(concord("agents", "register", unique("rotate"), "--save-credential", str(path), settings=env))
    old = path.read_text().strip()
    saved = answer(concord("agents", "rotate", agent["id"], "--save-credential", str(path), settings=env))
    assert saved["agentId"] == agent["id"] and saved["rotatedAt"] and "credential" not in saved, saved
    assert path.read_text().strip() != old and path.stat().st_mode & 0o777 == 0o600
    assert (
        answer(concord("agents", "heartbeat", "--credential-file", str(path), settings=env))["agentId"] == agent["id"]
    )
    refused = failure(concord("agents", "heartbeat", settings={**env, "CONCORD_AGENT_CREDENTIAL": old}), "unauthorized")
    assert refused["status"] == 401 and "registering the agent again" in refused["detail"], refused
    printed = answer(concord("agents", "rotate", agent["id"], settings=env))
    assert printed["agentId"] == agent["id"] and printed["credential"].startswith(f"concord-agent.{TENANT}."), printed


def test_a_forced_release_is_an_admin_keys(stack: Stack):
    env = settings_of(stack)
    holder = answer(concord("agents", "register", unique("holder"), settings=env))
    as_holder = {**env, "CONCORD_AGENT_CREDENTIAL": holder["credential"]}
    lease = answer(concord("lease", "acquire", "--contact", f"{unique('dan')}@example.com", settings=as_holder))
    released = answer(concord("lease", "release", lease["id"], "--force", settings=env))
    assert released["id"] == lease["id"] and released["released"] is True, released
    problem = failure(
        concord("lease", "release", lease["id"], "--force", settings={**env, "CONCORD_API_KEY": ""}),
        "not_configured",
        status=2,
    )
    assert "CONCORD_API_KEY" in problem["detail"], problem


def test_a_malformed_or_unreadable_credential_is_refused_naming_where_it_came_from(stack: Stack, tmp_path: Path):
    env = settings_of(stack)
    malformed = failure(
        concord("agents", "heartbeat", settings={**env, "CONCORD_AGENT_CREDENTIAL": "ck_an-api-key"}),
        "not_configured",
        status=2,
    )
    assert malformed["title"] == "Malformed agent credential" and "CONCORD_AGENT_CREDENTIAL" in malformed["detail"]
    assert "ck_an-api-key" not in malformed["detail"], malformed
    missing = failure(
        concord("agents", "heartbeat", "--credential-file", str(tmp_path / "nothing.cred"), settings=env),
        "not_configured",
        status=2,
    )
    assert "--credential-file" in missing["detail"], missing
    (tmp_path / "empty.cred").write_text("\n")
    empty = failure(
        concord("agents", "heartbeat", "--credential-file", str(tmp_path / "empty.cred"), settings=env),
        "not_configured",
        status=2,
    )
    assert "is empty" in empty["detail"], empty


def test_a_validation_error_of_the_api_is_its_problem_on_stderr(stack: Stack):
    env = settings_of(stack)
    invalid = failure(concord("agents", "register", "not a name!", settings=env), "validation_error")
    assert invalid["status"] == 422 and invalid["field"] == "$.agentName", invalid


def test_a_wrong_api_key_is_the_unauthorized_problem(stack: Stack):
    problem = failure(
        concord("agents", "list", settings={**settings_of(stack), "CONCORD_API_KEY": "wrong-key-123"}), "unauthorized"
    )
    assert problem["status"] == 401, problem


@pytest.mark.parametrize("variable, value", [("CONCORD_API_KEY", ""), ("CONCORD_URL", "localhost:8080")])
def test_a_missing_or_malformed_setting_is_refused_naming_the_variable(stack: Stack, variable: str, value: str):
    problem = failure(
        concord("agents", "list", settings={**settings_of(stack), variable: value}), "not_configured", status=2
    )
    assert variable in problem["detail"], problem


def test_an_unreachable_service_is_the_unreachable_problem_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    problem = failure(
        concord("agents", "list", settings={"CONCORD_URL": url, "CONCORD_API_KEY": API_KEY}), "unreachable"
    )
    assert problem["url"] == url and url in problem["detail"], problem


# --- help and usage ------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["agents", "lease", "consensus", "inspect"])
def test_help_of_each_command_shows_examples(group: str):
    run = concord(group, "--help", settings={})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: concord {group}") and "\nexamples:\n  " in run.stdout, run.stdout
    assert f"concord {group} " in run.stdout.partition("examples:")[2], run.stdout


def test_help_of_every_subcommand_shows_examples(capsys: pytest.CaptureFixture[str]):
    """In-process (a subprocess each would cost seconds): every leaf's --help exits 0
    and shows an example that runs that very command."""
    leaves = {
        "agents": ["register", "rotate", "heartbeat", "list", "show", "remove"],
        "lease": ["acquire", "renew", "release", "show", "list", "check"],
        "consensus": ["request", "vote", "show", "list", "wait"],
    }
    for group, commands in leaves.items():
        for command in commands:
            with pytest.raises(SystemExit) as exited:
                main([group, command, "--help"])
            out = capsys.readouterr().out
            assert exited.value.code == 0, (group, command)
            assert out.startswith(f"usage: concord {group} {command}"), out
            assert f"concord {group} {command} " in out.partition("\nexamples:\n")[2], out
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and all(f"concord {group}" in out for group in [*leaves, "inspect"]), out


@pytest.mark.parametrize(
    "args, says",
    [
        (["agents", "register"], "NAME"),
        (["lease", "acquire", "--agent", "agent_x"], "--contact"),
        (["consensus", "vote", "cons_x", "maybe", "--agent", "agent_x"], "maybe"),
        (["agents", "register", "sdr", "--metadata", "[1, 2]"], "JSON object"),
        (["lease", "acquire", "--agent", "agent_x", "--contact", "a@example.com", "--duration", "0"], "--duration"),
        (["lease", "release", "lease_x", "--agent", "agent_x", "--force"], "not allowed with"),
        (["agents", "register", "sdr", "--save-credential", "/no/such/directory/sdr.cred"], "cannot write"),
        (["inspect", "--tenant", "acme", "--agent", unknown_id("agent"), "--consensus", "cons_x"], "not allowed with"),
        (["inspect", "--tenant", "acme", "--contact", "not-an-address"], "email address"),
    ],
)
def test_usage_errors_exit_2_and_say_what_is_wrong(args: list[str], says: str):
    run = concord(*args, settings={"CONCORD_API_KEY": API_KEY})
    assert run.returncode == 2 and run.stdout == "", run
    assert "usage: concord" in run.stderr and says in run.stderr, run.stderr


# --- inspect -------------------------------------------------------------------------------


def inspect(stack: Stack, *selector: str) -> dict[str, Any]:
    report = answer(concord("inspect", "--tenant", QUIET, *selector, settings=settings_of(stack)))
    assert report["tenant"] == QUIET and report["prefix"] == stack.keys.prefix, report
    return report


def check_against_redis(r: redis.Redis, entry: dict[str, Any], kind: str, expires: bool = False) -> None:
    """An inspect entry says what Redis holds: its type, its contents, and a TTL that is
    null for a key without expiry, else at least what is left now (TTLs only fall)."""
    key = entry["key"]
    assert entry["type"] == r.type(key) == kind, (entry, r.type(key))
    ttl = r.pttl(key)
    if expires:
        assert ttl > 0 and entry["ttlMs"] >= ttl, (entry, ttl)
    else:
        assert entry["ttlMs"] is None and ttl in (-1, -2), (entry, ttl)
    if "value" in entry:
        held = {"hash": r.hgetall, "string": r.get}.get(kind)
        if held is not None:
            assert entry["value"] == held(key), (entry, held(key))
        elif kind == "none":
            assert entry["value"] is None, entry
    if "member" in entry:
        score = r.zscore(key, entry["member"])
        assert entry["score"] == (None if score is None else int(score)), (entry, score)
    if "size" in entry:
        assert entry["size"] == r.zcard(key), entry


@pytest.fixture(scope="module")
def scene(stack: Stack) -> dict[str, Any]:
    """In its own tenant: two agents, a lease of the first on a contact, and a consensus
    request of it that the second approved."""
    with httpx.Client(base_url=stack.service.url, auth=Fleet(QUIET_KEY)) as http:  # each agent with its credential
        holder = http.post(f"{V1}/register", json={"agentName": unique("holder"), "agentRole": "sdr"}).json()
        voter = http.post(f"{V1}/register", json={"agentName": unique("voter")}).json()
        contact = f"{unique('carol')}@example.com"
        lease = http.post(
            f"{C}/lease", json={"agentId": holder["id"], "contactEmail": contact, "durationSeconds": LEASE_SECONDS}
        ).json()
        request = http.post(f"{C}/consensus", json={"requestingAgentId": holder["id"], "action": "refund"}).json()
        http.post(f"{C}/consensus/{request['id']}/vote", json={"agentId": voter["id"], "vote": "approve"})
        shown = http.get(f"{C}/consensus/{request['id']}").json()
    return {"holder": holder, "voter": voter, "contact": contact, "lease": lease, "consensus": shown}


def test_inspect_a_contact_shows_its_lease_and_holder(stack: Stack, r: redis.Redis, scene: dict[str, Any]):
    k, holder = stack.keys, scene["holder"]["id"]
    report = inspect(stack, "--contact", f"  {scene['contact'].upper()}")
    assert report["view"] == "contact" and report["contact"] == scene["contact"], report
    lease, agent, heartbeat, registry = report["keys"]
    assert [entry["key"] for entry in report["keys"]] == [
        k.lease(QUIET, scene["contact"]),
        k.agent(QUIET, holder),
        k.heartbeats(QUIET),
        k.lease_registry(QUIET, agent_tag(holder)),
    ]
    check_against_redis(r, lease, "string", expires=True)
    assert lease["ttlMs"] <= LEASE_SECONDS * 1000 and lease["value"].split("|")[:2] == [
        holder.removeprefix("agent_"),
        str(scene["lease"]["fencingToken"]),
    ], lease
    check_against_redis(r, agent, "hash")
    assert agent["value"]["agentName"] == scene["holder"]["agentName"], agent
    check_against_redis(r, heartbeat, "zset")
    assert heartbeat["member"] == holder and heartbeat["active"] is True, heartbeat
    check_against_redis(r, registry, "hash", expires=True)
    assert registry["value"][str(scene["lease"]["fencingToken"])].endswith(f":{scene['contact']}"), registry

    free = inspect(stack, "--contact", "nobody@example.com")
    assert free["keys"] == [
        {"key": k.lease(QUIET, "nobody@example.com"), "type": "none", "ttlMs": None, "value": None}
    ], free


def test_inspect_an_agent_shows_its_hash_heartbeat_and_leases(stack: Stack, r: redis.Redis, scene: dict[str, Any]):
    k, holder = stack.keys, scene["holder"]["id"]
    report = inspect(stack, "--agent", holder)
    assert report["view"] == "agent" and report["agent"] == holder, report
    assert [entry["key"] for entry in report["keys"]] == [
        k.agent(QUIET, holder),
        k.heartbeats(QUIET),
        k.agents(QUIET),
        k.lease_registry(QUIET, agent_tag(holder)),
        k.lease(QUIET, scene["contact"]),
        k.rate_bucket(QUIET, holder),
    ]
    agent, heartbeat, registered, registry, lease, bucket = report["keys"]
    check_against_redis(r, agent, "hash")
    check_against_redis(r, heartbeat, "zset")
    check_against_redis(r, registered, "zset")
    assert heartbeat["active"] is True and registered["member"] == holder, report
    check_against_redis(r, registry, "hash", expires=True)
    check_against_redis(r, lease, "string", expires=True)
    check_against_redis(r, bucket, "none")  # no Redis rate limit configured (the in-process ones write none)


def test_inspect_a_consensus_request_shows_its_votes_and_lists(stack: Stack, r: redis.Redis, scene: dict[str, Any]):
    k, consensus = stack.keys, scene["consensus"]
    assert consensus["status"] == "approved", consensus
    report = inspect(stack, "--consensus", consensus["id"])
    assert report["view"] == "consensus" and report["consensus"] == consensus["id"], report
    lists = ["all", "pending", "approved", "rejected", "expired"]
    assert [entry["key"] for entry in report["keys"]] == [
        k.consensus(QUIET, consensus["id"]),
        k.votes(QUIET, consensus["id"]),
        *(k.consensus_list(QUIET, status) for status in lists),
        k.consensus_due(QUIET),
    ]
    request, votes, *memberships = report["keys"]
    check_against_redis(r, request, "hash", expires=True)  # kept for 7 days once decided
    check_against_redis(r, votes, "hash", expires=True)
    assert request["value"]["status"] == "approved", request
    assert list(votes["value"]) == [scene["voter"]["id"]] and votes["value"][scene["voter"]["id"]].startswith(
        "approve|"
    ), votes
    for entry in memberships:
        check_against_redis(r, entry, r.type(entry["key"]))
    held = {entry["key"] for entry in memberships if entry["score"] is not None}
    assert held == {k.consensus_list(QUIET, "all"), k.consensus_list(QUIET, "approved")}, memberships


def test_inspect_a_tenant_gives_an_overview(stack: Stack, r: redis.Redis, scene: dict[str, Any]):
    k = stack.keys
    report = inspect(stack)
    assert report["view"] == "overview", report
    expected = [
        k.heartbeats(QUIET),
        k.agents(QUIET),
        k.fence(QUIET),
        *(k.consensus_list(QUIET, s) for s in ["all", "pending", "approved", "rejected", "expired"]),
        k.consensus_due(QUIET),
        k.rate_bucket(QUIET),
    ]
    events = getattr(k, "events", None)
    if events is not None:
        expected.append(events(QUIET))
    assert [entry["key"] for entry in report["keys"]] == expected
    heartbeats, agents, fence, *rest = report["keys"]
    for entry in [heartbeats, agents, *rest[:6]]:
        check_against_redis(r, entry, r.type(entry["key"]))
    check_against_redis(r, fence, "string")
    assert int(fence["value"]) >= scene["lease"]["fencingToken"], fence
    seconds, micros = r.time()
    window_start = int(seconds) * 1000 + int(micros) // 1000 - 300_000
    # Nothing in this module lets an agent lapse: every agent with a heartbeat is active.
    assert heartbeats["active"] == r.zcount(k.heartbeats(QUIET), f"({window_start}", "+inf") == heartbeats["size"]
    if events is not None and r.exists(events(QUIET)):
        stream = report["keys"][-1]
        assert stream["type"] == "stream" and stream["value"]["length"] == r.xlen(events(QUIET)), stream
        assert [item["id"] for item in stream["value"]["newest"]] == [
            entry_id for entry_id, _ in r.xrevrange(events(QUIET), count=5)
        ], stream


def test_inspect_needs_a_redis_url():
    problem = failure(concord("inspect", "--tenant", QUIET, settings={}), "not_configured", status=2)
    assert "CONCORD_REDIS_URL" in problem["detail"], problem


def test_inspect_of_a_redis_that_does_not_answer_is_the_unreachable_problem():
    url = f"redis://:secret-password@127.0.0.1:{free_port()}/0"
    problem = failure(concord("inspect", "--tenant", QUIET, settings={"CONCORD_REDIS_URL": url}), "unreachable")
    assert "secret-password" not in json.dumps(problem), problem
    assert problem["url"].startswith("redis://:***@127.0.0.1:"), problem
