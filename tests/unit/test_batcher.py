"""The batcher (concord.server.redis.batcher.Batcher): the Redis calls of concurrent requests
share pipelines, and each caller still gets its own reply or its own error.

Run on fakeredis and on a real Redis; what needs a real server (killing its
connections, a command that blocks it) runs on the real one only.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from concord.server.redis.batcher import Batcher, pack

# The batcher speaks to one server: on a cluster, scripts go through the cluster client
# instead (concord.server.store.scripts.Scripts), so these run on fakeredis and a single Redis only.
pytestmark = pytest.mark.single_server

INCR = "return redis.call('INCR', KEYS[1])"
INCR_SHA = hashlib.sha1(INCR.encode()).hexdigest()


async def test_concurrent_calls_each_get_their_own_reply_or_error(redis_client: Redis, prefix: str):
    await redis_client.set(f"{prefix}:text", "not a number")
    batcher = Batcher(redis_client)
    calls = []
    for i in range(60):
        if i % 3 == 0:
            calls.append(batcher.call(("SET", f"{prefix}:k{i}", f"v{i}"), ""))
        elif i % 3 == 1:
            calls.append(batcher.call(("INCR", f"{prefix}:text"), ""))  # an error of its own
        else:
            calls.append(batcher.call(("INCR", f"{prefix}:n"), ""))

    replies = await asyncio.gather(*calls, return_exceptions=True)

    for i, reply in enumerate(replies):
        if i % 3 == 0:
            assert reply == "OK", (i, reply)
        elif i % 3 == 1:
            assert isinstance(reply, ResponseError) and "not an integer" in str(reply), (i, reply)
        else:
            assert isinstance(reply, int), (i, reply)
    assert sorted(r for i, r in enumerate(replies) if i % 3 == 2) == list(range(1, 21))
    assert await redis_client.mget([f"{prefix}:k{i}" for i in range(0, 60, 3)]) == [f"v{i}" for i in range(0, 60, 3)]


async def test_a_script_redis_lost_is_loaded_again_and_the_call_runs_once(redis_client: Redis, prefix: str):
    await redis_client.script_flush()
    batcher = Batcher(redis_client)

    replies = await asyncio.gather(*(batcher.call(("EVALSHA", INCR_SHA, 1, f"{prefix}:n"), INCR) for _ in range(5)))

    assert sorted(replies) == [1, 2, 3, 4, 5]
    assert await redis_client.get(f"{prefix}:n") == "5"


async def test_a_call_whose_caller_gave_up_before_its_batch_left_is_never_sent(redis_client: Redis, prefix: str):
    batcher = Batcher(redis_client)
    abandoned = batcher.call(("SET", f"{prefix}:abandoned", "1"), "")
    kept = batcher.call(("SET", f"{prefix}:kept", "1"), "")
    abandoned.cancel()  # its request timed out while the call waited for the next batch

    await kept

    assert await redis_client.exists(f"{prefix}:abandoned") == 0
    assert await redis_client.get(f"{prefix}:kept") == "1"


@pytest.mark.real
async def test_a_connection_redis_dropped_is_replaced_without_failing_the_call(real_client: Redis, prefix: str):
    batcher = Batcher(real_client)
    assert await batcher.call(("SET", f"{prefix}:before", "1"), "") == "OK"
    killed = await real_client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1

    assert await batcher.call(("INCR", f"{prefix}:after"), "") == 1
    assert await real_client.get(f"{prefix}:after") == "1"


@pytest.mark.real
async def test_a_batch_past_its_timeout_fails_alone_and_the_next_batch_works(real_client: Redis, prefix: str):
    batcher = Batcher(real_client, timeout=0.2, in_flight=1)
    # BLPOP on an empty list holds the batcher's connection for 30 s: past the timeout.
    blocked = batcher.call(("BLPOP", f"{prefix}:empty", 30), "")
    with pytest.raises(TimeoutError):
        await blocked

    assert await batcher.call(("INCR", f"{prefix}:n"), "") == 1
    # The blocked connection was closed, not left waiting for its reply.
    clients = await real_client.client_list()
    assert not [c for c in clients if c.get("cmd") == "blpop"], clients


@pytest.mark.parametrize(
    "command",
    [
        ("SET", "key", "value"),
        ("EVALSHA", "a" * 40, 3, "{t}:a", "{t}:b", "{t}:c", "agent_1", "", 0, -17, 1800000, 0.25),  # text and numbers
        ("EVALSHA", "a" * 40, 2, "{t}:a", "{t}:b", "", "é ü ✓", b'{"metadata": [1, 2]}', 0, -17, 1800000, 0.25),
        ("HSET", "key", "field", b"\x00\r\n$3\r\n"),  # bytes that look like the protocol itself
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(command):
    assert pack(command) == b"".join(Connection().pack_command(*command))


@pytest.mark.parametrize("argument", [True, None, [1], {"a": 1}])
def test_an_argument_redis_cannot_take_is_refused_before_anything_is_sent(argument):
    with pytest.raises(TypeError):
        pack(("SET", "key", argument))


async def test_every_argument_type_arrives_as_sent(redis_client: Redis, prefix: str):
    batcher = Batcher(redis_client)
    values = {"text": "é ü ✓", "bytes": b'{"a": 1}', "int": -17, "float": 0.25, "empty": ""}

    await asyncio.gather(*(batcher.call(("SET", f"{prefix}:{name}", value), "") for name, value in values.items()))

    stored = await redis_client.mget([f"{prefix}:{name}" for name in values])
    assert stored == ["é ü ✓", '{"a": 1}', "-17", "0.25", ""]


async def test_a_command_redis_cannot_take_fails_its_caller_alone(redis_client: Redis, prefix: str):
    batcher = Batcher(redis_client)
    kept = batcher.call(("SET", f"{prefix}:kept", "1"), "")
    with pytest.raises(TypeError):
        batcher.call(("SET", f"{prefix}:refused", None), "")

    assert await kept == "OK"
    assert await redis_client.exists(f"{prefix}:refused") == 0
