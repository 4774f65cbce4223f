"""The Lua scripts keep the promises of their headers and of the house style.

Static checks over lua/*.lua (as concord.server.store.scripts.sources() parsed them): every
KEYS/ARGV a script reads is declared in its header and every declared input is
read; the first lines name the inputs; the replies a header lists are the replies
the body can give; no script scans or builds a key name. Then two live checks:
a call of the wrong arity is refused before reaching Redis, and a script Redis
has forgotten (SCRIPT FLUSH) is loaded again.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from concord.server.principals import KeyGrant
from concord.server.store import Store
from concord.server.store.keys import Keys
from concord.server.store.replies import Reply
from concord.server.store.scripts import LIB, Scripts, Source, script_text, sources

TENANT = "acme"
SCRIPTS = {name: source for name, source in sources().items() if name != LIB}
LIB_SOURCE = sources()[LIB]

_INDEX = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")
_UNPACK = re.compile(r"\bunpack\(\s*(KEYS|ARGV)\s*,\s*(\d+)\s*\)")
_CONSENSUS_KEYS_CALL = re.compile(r"\bconsensus_keys\(\)")
_CONSENSUS_KEYS_DEF = re.compile(r"local function consensus_keys\(\)\n(.*?)\nend\n", re.DOTALL)
_REPLY_CONSTANT = re.compile(r"^local ([A-Z_]+) = (-?\d+)\b", re.MULTILINE)
_REDIS_CALL = re.compile(r"\bredis\.p?call\(\s*'(\w+)'")
# The prologue lines that may name an input: "local x = KEYS[1]", "local n = tonumber(ARGV[2])",
# "local flag = ARGV[2] == '1'" (a flag), "local rest = {unpack(KEYS, 5)}", "local k = consensus_keys()".
_INPUT_LINE = re.compile(
    r"^local (?P<name>\w+) = (?:"
    r"(?:tonumber\()?(?P<kind>KEYS|ARGV)\[(?P<index>\d+)\]\)?(?: == '[^']*')?"
    r"|\{unpack\((?P<vkind>KEYS|ARGV), (?P<vindex>\d+)\)\}"
    r"|(?P<consensus>consensus_keys\(\))"
    r")$"
)
_KIND = r"(hash|zset|string|stream|set)"
# What a script's wrong_type check expects of a key: "[lease_key] = 'string'" in a table or as
# "expected[idempotency_key] = 'hash'"; "for _, lease_key in ipairs(lease_keys) do expected[lease_key] = 'string'"
# for a variadic KEYS; lib.lua's consensus_types() as "[k.cons] = 'hash'".
_CHECKED = re.compile(rf"\[(\w+)\] = '{_KIND}'")
_CHECKED_EACH = re.compile(rf"for _, (\w+) in ipairs\((\w+)\) do expected\[\1\] = '{_KIND}'")
_CONSENSUS_TYPES_CALL = re.compile(r"\bconsensus_types\(k\)")
_CONSENSUS_TYPES_DEF = re.compile(r"local function consensus_types\(k\)\n(.*?)\nend\n", re.DOTALL)
_HEADER_KEY = re.compile(r"^\s+KEYS\[\d+(?:\.\.)?\]\s+(\w+)\s+keys\.\w+\(")


def body(source: Source) -> str:
    """The script after its header comment, without Lua line comments."""
    return re.sub(r"--[^\n]*", "", source.text.split("]]", 1)[1])


def consensus_key_fields() -> dict[int, str]:
    """KEYS index -> field of the table lib.lua's consensus_keys() returns."""
    match = _CONSENSUS_KEYS_DEF.search(LIB_SOURCE.text)
    assert match, "lib.lua defines consensus_keys()"
    fields = re.findall(r"(\w+) = KEYS\[(\d+)\]", match.group(1))
    return {int(index): field for field, index in fields}


def used(source: Source) -> dict[str, set[int]]:
    """KEYS/ARGV indexes the script reads directly, its own or through consensus_keys()."""
    text = body(source)
    found: dict[str, set[int]] = {"KEYS": set(), "ARGV": set()}
    for kind, index in _INDEX.findall(text):
        found[kind].add(int(index))
    if _CONSENSUS_KEYS_CALL.search(text):
        found["KEYS"] |= set(consensus_key_fields())
    return found


def unpacked(source: Source) -> dict[str, set[int]]:
    """Where the script takes "the rest" of KEYS/ARGV: unpack(KEYS, n) -> n."""
    found: dict[str, set[int]] = {"KEYS": set(), "ARGV": set()}
    for kind, index in _UNPACK.findall(body(source)):
        found[kind].add(int(index))
    return found


def declared(source: Source, kind: str) -> tuple[tuple[str, ...], bool]:
    return (source.keys, source.variadic_keys) if kind == "KEYS" else (source.args, source.variadic_args)


def first_argument(text: str, start: int) -> str:
    """The text of the call argument starting at ``start``, up to its top-level ',' or ')'."""
    depth, quote, i = 0, None, start
    while i < len(text):
        ch = text[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0:
            break
        i += 1
    return text[start:i].strip()


def header_types(source: Source) -> dict[str, str]:
    """KEYS name -> the type its header line names after the key builder ("keys.lease(tenant, contact)   string"),
    for the keys whose line names one."""
    found = {}
    for line in source.header.splitlines():
        match = _HEADER_KEY.match(line)
        if not match:
            continue
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(line[i], 0)
            i += 1
        words = line[i:].replace(",", " ").split()
        if words and words[0] in ("hash", "zset", "string", "stream", "set"):
            found[match.group(1)] = words[0]
    return found


def checked_types(source: Source) -> dict[str, str]:
    """KEYS name -> the type the script's wrong_type check expects there."""
    text = body(source)
    found = dict(_CHECKED.findall(text))
    for var, keys_name, kind in _CHECKED_EACH.findall(text):
        del found[var]
        found[keys_name] = kind
    if _CONSENSUS_TYPES_CALL.search(text):
        match = _CONSENSUS_TYPES_DEF.search(LIB_SOURCE.text)
        assert match, "lib.lua defines consensus_types(k)"
        found |= {f"{field}_key": kind for field, kind in re.findall(rf"\[k\.(\w+)\] = '{_KIND}'", match.group(1))}
    return found


by_script = pytest.mark.parametrize("name", sorted(SCRIPTS))


# --- headers against bodies --------------------------------------------------


@by_script
def test_every_input_read_is_declared(name):
    source = SCRIPTS[name]
    for kind, indexes in used(source).items():
        names, _ = declared(source, kind)
        undeclared = sorted(i for i in indexes if not 1 <= i <= len(names))
        assert not undeclared, f"lua/{name}.lua reads {kind}{undeclared} but its header declares {len(names)}"
    for kind, indexes in unpacked(source).items():
        names, variadic = declared(source, kind)
        for index in indexes:
            assert variadic and index == len(names), (
                f"lua/{name}.lua reads {kind}[{index}..]; its header must end with {kind}[{index}..]"
            )


@by_script
def test_every_declared_input_is_read(name):
    source = SCRIPTS[name]
    for kind in ("KEYS", "ARGV"):
        names, variadic = declared(source, kind)
        read = used(source)[kind] | unpacked(source)[kind]
        for index, var in enumerate(names, start=1):
            assert index in read, f"lua/{name}.lua declares {kind}[{index}] {var} but never reads it"
        if variadic:
            # "X[n..]" is read as the rest (unpack(X, n)) or, for one optional input, as X[n].
            assert unpacked(source)[kind] <= {len(names)} and len(names) in read, (
                f"lua/{name}.lua: variadic {kind}[{len(names)}..] never read"
            )


def test_lib_reads_keys_only_in_consensus_keys_and_never_argv():
    text = body(LIB_SOURCE)
    outside = _CONSENSUS_KEYS_DEF.sub("", text)
    assert not _INDEX.search(outside) and not _UNPACK.search(outside)
    assert consensus_key_fields() == {
        i: f
        for i, f in enumerate(
            (
                "cons",
                "votes",
                "heartbeats",
                "all",
                "pending",
                "approved",
                "rejected",
                "expired",
                "due",
                "events",
                "since",
                "mark",
                "electorate",
            ),
            start=1,
        )
    }


def test_the_consensus_scripts_declare_the_keys_consensus_keys_reads():
    fields = consensus_key_fields()
    users = [name for name, source in SCRIPTS.items() if _CONSENSUS_KEYS_CALL.search(body(source))]
    assert sorted(users) == ["consensus_read", "consensus_request", "consensus_vote"]
    for name in users:
        keys = SCRIPTS[name].keys
        assert len(keys) >= len(fields)
        # The header's "KEYS[1] cons_key" is lib's "cons = KEYS[1]".
        for index, field in fields.items():
            assert keys[index - 1] == f"{field}_key", f"lua/{name}.lua KEYS[{index}]"


@by_script
def test_first_lines_name_the_inputs_and_the_body_never_indexes_them_again(name):
    source = SCRIPTS[name]
    lines = [line.strip() for line in body(source).splitlines() if line.strip()]
    prologue = []
    for line in lines:
        match = _INPUT_LINE.match(line)
        if not match:
            break
        prologue.append(match)
    rest = "\n".join(lines[len(prologue) :])
    assert not _INDEX.search(rest) and not _UNPACK.search(rest) and not _CONSENSUS_KEYS_CALL.search(rest), (
        f"lua/{name}.lua reads KEYS/ARGV after its first lines"
    )

    named: dict[str, set[int]] = {"KEYS": set(), "ARGV": set()}
    for match in prologue:
        if match["consensus"]:
            named["KEYS"] |= set(consensus_key_fields())
            continue
        kind = match["kind"] or match["vkind"]
        index = int(match["index"] or match["vindex"])
        named[kind].add(index)
        names, _ = declared(source, kind)
        # The local is called what the header calls the input.
        assert match["name"] == names[index - 1], f"lua/{name}.lua: {kind}[{index}] is {names[index - 1]} in the header"
    for kind in ("KEYS", "ARGV"):
        names, _ = declared(source, kind)
        assert named[kind] == set(range(1, len(names) + 1)), f"lua/{name}.lua's first lines name {kind} {named[kind]}"


@by_script
def test_header_names_the_script_and_a_keys_builder_for_every_key(name):
    source = SCRIPTS[name]
    assert source.header.split("\n", 2)[1].strip().startswith(f"{name}: ")
    for line in source.header.splitlines():
        if re.match(r"\s+KEYS\[", line):
            builder = re.search(r"\bkeys\.(\w+)\(", line)
            assert builder and callable(getattr(Keys, builder.group(1), None)), f"lua/{name}.lua: {line.strip()}"


@by_script
def test_header_replies_are_the_replies_the_body_gives(name):
    source = SCRIPTS[name]
    header, _, replies = source.header.partition("Replies:")
    assert replies, f"lua/{name}.lua's header has no Replies: section"
    codes = set(Reply.__members__)
    listed = set(re.findall(r"\b[A-Z_]+\b", replies)) & codes
    given = set(re.findall(r"\b[A-Z_]+\b", body(source))) & codes
    assert listed == given, f"lua/{name}.lua: header lists {sorted(listed)}, body gives {sorted(given)}"


@by_script
def test_the_types_a_script_checks_are_its_keys_and_the_types_its_header_names(name):
    source = SCRIPTS[name]
    checked, named = checked_types(source), header_types(source)
    assert set(checked) <= set(source.keys), f"lua/{name}.lua checks {sorted(set(checked) - set(source.keys))}"
    for key, kind in checked.items():
        assert named.get(key, kind) == kind, f"lua/{name}.lua: header says {key} is a {named[key]}, the check a {kind}"


def test_a_lease_is_a_string_and_a_lease_registry_a_hash_in_every_lease_script():
    """The layout of issue 4: one string per leased contact, one hash of token -> "expiresAt:contact" per agent tag."""
    lease_scripts = sorted(name for name, source in SCRIPTS.items() if {"lease_key", "lease_keys"} & set(source.keys))
    assert lease_scripts == ["agent_remove", "lease_acquire", "lease_release", "lease_renew", "lease_send_check"]
    for name in lease_scripts:
        source, types = SCRIPTS[name], checked_types(SCRIPTS[name]) | header_types(SCRIPTS[name])
        for key in {"lease_key", "lease_keys"} & set(source.keys):
            assert types.get(key) == "string", f"lua/{name}.lua: {key}"
        if name != "lease_send_check":  # reads only the lease
            assert "registry_key" in source.keys, f"lua/{name}.lua"
            assert checked_types(source)["registry_key"] == "hash", f"lua/{name}.lua"
            assert "keys.lease_registry(" in source.header, f"lua/{name}.lua"
    # Nothing builds the lease-id pointer or the per-agent lease index of the old layout.
    assert not hasattr(Keys, "agent_leases") and not hasattr(Keys, "lease_id")


def test_reply_codes_in_lib_equal_the_store_reply_enum():
    constants = {name: int(value) for name, value in _REPLY_CONSTANT.findall(LIB_SOURCE.text)}
    assert constants == {member.name: member.value for member in Reply}


# --- what scripts may do with Redis ------------------------------------------


@pytest.mark.parametrize("name", sorted(sources()))
def test_no_script_scans_or_lists_keys(name):
    commands = {command.upper() for command in _REDIS_CALL.findall(sources()[name].text)}
    assert not commands & {"KEYS", "SCAN"}, f"lua/{name}.lua calls {sorted(commands & {'KEYS', 'SCAN'})}"


@pytest.mark.parametrize("name", sorted(sources()))
def test_no_script_builds_a_key_name(name):
    """The key position of every redis.call is a variable holding a key from KEYS:
    no literal, no concatenation, no function call."""
    text = body(sources()[name])
    calls = list(_REDIS_CALL.finditer(text))
    assert calls
    for call in calls:
        if call.group(1).upper() == "TIME":  # takes no key
            continue
        rest = text[call.end() :]
        assert rest.lstrip().startswith(","), f"lua/{name}.lua: {call.group(0)} without a key"
        key = first_argument(rest, rest.index(",") + 1)
        assert re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*|\[[A-Za-z_]\w*\])?", key), (
            f"lua/{name}.lua: {call.group(1)} on a computed key {key!r}"
        )


# --- arity and the script cache ----------------------------------------------


# Scripts whose header requires at least one input: a call can have too few of them.
# (rate_limit takes any number of buckets, each with two ARGV, so no count is wrong.)
with_required_inputs = pytest.mark.parametrize(
    "name",
    sorted(n for n, src in SCRIPTS.items() if len(src.keys) > src.variadic_keys or len(src.args) > src.variadic_args),
)


@with_required_inputs
async def test_wrong_number_of_keys_or_args_is_a_type_error(name, store):
    source = SCRIPTS[name]
    script = getattr(store.scripts, name)
    keys = [f"{store.keys.tenant(TENANT)}:k{i}" for i in range(len(source.keys))]
    args = ["a"] * len(source.args)
    # A variadic "X[n..]" may be empty, so the shortest valid call has n - 1 of X.
    if source.variadic_keys:
        keys = keys[:-1]
    if source.variadic_args:
        args = args[:-1]

    wrong = [(keys[:-1], args)]
    if not source.variadic_keys:
        wrong.append((keys + ["extra"], args))
    if args:
        wrong.append((keys, args[:-1]))
    if not source.variadic_args:
        wrong.append((keys, args + ["extra"]))
    for bad_keys, bad_args in wrong:
        with pytest.raises(TypeError, match=f"lua/{name}.lua declares"):
            await script(keys=bad_keys, args=bad_args)
    # Nothing reached Redis.
    assert [key async for key in store.redis.scan_iter(match=f"{store.keys.prefix}:*")] == []


def test_every_script_declares_its_inputs():
    for name, source in SCRIPTS.items():
        assert source.keys, f"lua/{name}.lua declares no KEYS"
        assert source.args, f"lua/{name}.lua declares no ARGV"


@pytest.mark.real
async def test_a_flushed_script_cache_is_reloaded(real_client, keys):
    store, key = Store(real_client, keys, 300), KeyGrant("cfg-1", TENANT)
    agent, created = await store.agents.register(TENANT, "sdr", None, None, key)
    assert created
    sha = hashlib.sha1(script_text("agent_register").encode()).hexdigest()
    assert await real_client.script_exists(sha) == [True]

    await real_client.script_flush()
    assert await real_client.script_exists(sha) == [False]

    again, created = await store.agents.register(TENANT, "sdr", "retention", None, key)
    assert not created
    assert again.id == agent.id and again.agent_role == "retention"
    assert await real_client.script_exists(sha) == [True]
    assert await real_client.hget(keys.agent(TENANT, agent.id), "agentRole") == "retention"


_HELPER_CALL = re.compile(r"\b(\w+)\(")
_HELPER_DEF = re.compile(r"^local function (\w+)\(", re.MULTILINE)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_is_sent_with_the_helpers_it_calls_and_no_others(name):
    """Redis runs the whole text of a script on every call, and each helper of lib.lua
    it defines is a closure built there: a script carries the helpers it calls (and
    those they call), each defined before its first caller, and none it never calls."""
    sent = script_text(name)
    defined = [match[1] for match in _HELPER_DEF.finditer(sent)]
    lib_helpers = set(_HELPER_DEF.findall(LIB_SOURCE.text))
    code = re.sub(r"--\[\[.*?\]\]|--[^\n]*", "", sent, flags=re.DOTALL)
    called = set(_HELPER_CALL.findall(code.split("local function", 1)[0] + SCRIPTS[name].text)) & lib_helpers
    reached, pending = set(), called
    while pending:
        reached |= pending
        pending = {
            helper
            for caller in pending
            for helper in _HELPER_CALL.findall(re.sub(r"--[^\n]*", "", _helper_text(caller)))
            if helper in lib_helpers
        } - reached
    assert set(defined) == reached, f"lua/{name}.lua is sent with {sorted(defined)}"
    assert len(defined) == len(set(defined))
    for helper in defined:
        first_call = min(
            (m.start() for m in re.finditer(rf"\b{helper}\(", code) if not code[: m.start()].endswith("function ")),
            default=len(code),
        )
        assert code.index(f"local function {helper}(") < first_call, f"{helper} is called before it is defined"
    assert sent.endswith(SCRIPTS[name].text) and sent.startswith(LIB_SOURCE.text.split("local function", 1)[0][:200])


def _helper_text(helper: str) -> str:
    match = re.search(rf"^local function {helper}\(.*?^end\n", LIB_SOURCE.text, re.MULTILINE | re.DOTALL)
    assert match, helper
    return match[0]


def test_every_script_is_declared_as_an_attribute_of_scripts():
    """``scripts.lease_acquire`` is lua/lease_acquire.lua: each file has its attribute,
    each attribute its file, so a reader (and an editor) can follow one to the other."""
    assert set(Scripts.__annotations__) == set(SCRIPTS)


def test_a_script_without_its_attribute_stops_the_service_at_start(monkeypatch, redis_client):
    monkeypatch.setitem(sources(), "lease_steal", sources()["lease_release"])
    with pytest.raises(RuntimeError, match="lua/lease_steal.lua is not declared as an attribute of Scripts"):
        Scripts(redis_client)


async def test_load_puts_every_script_into_redis_before_the_first_call(redis_client, keys):
    """On a cluster, into every master: redis-py answers SCRIPT EXISTS for all of them."""
    store = Store(redis_client, keys, 300)
    await redis_client.script_flush()
    shas = [hashlib.sha1(script.text.encode()).hexdigest() for script in store.scripts.all()]
    assert await redis_client.script_exists(*shas) == [False] * len(shas)
    await store.scripts.load()
    assert len(shas) == len(SCRIPTS) and await redis_client.script_exists(*shas) == [True] * len(shas)
    await store.aclose()
