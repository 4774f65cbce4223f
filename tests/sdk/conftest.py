"""One real `concord serve` on a private redis-server for all SDK tests (the
package), and clients of it; tests keep apart by agents, contacts and tenants of
their own (tests/sdk/live.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from concord import AsyncConcord, Concord
from tests.sdk.live import API_KEY, keys_setting
from tests.support.helpers import Stack, running_stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("sdk"), {"CONCORD_API_KEYS": keys_setting()}) as running:
        yield running


@pytest.fixture(scope="package")
def r(stack: Stack) -> Iterator[redis.Redis]:
    client = stack.redis.client()
    yield client
    client.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[Concord]:
    with Concord(stack.service.url, API_KEY) as concord:
        yield concord


@pytest.fixture
async def aclient(stack: Stack) -> AsyncIterator[AsyncConcord]:
    async with AsyncConcord(stack.service.url, API_KEY) as concord:
        yield concord
