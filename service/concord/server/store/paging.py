"""Newest-first keyset pagination over the zsets that index a tenant's agents and
consensus requests (id -> ms), and the opaque cursors of the API's lists."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from concord.server.errors import invalid

T = TypeVar("T")


async def page(
    redis: Any,
    index_key: str,
    cursor: str | None,
    limit: int,
    load: Callable[[list[str]], Awaitable[Sequence[T | None]]],
    top: str = "+inf",
    bottom: str = "-inf",
) -> tuple[list[T], str | None]:
    """Up to ``limit`` items, highest score first, after ``cursor``; and the next cursor.

    ``load`` turns a batch of ids into items, or None for one to skip. One item
    more than the page is gathered, so nextCursor is null exactly on the last page.
    Only scores from ``top`` down to ``bottom`` (ZRANGE BYSCORE bounds: "(" makes
    one exclusive) are read: a page costs what it returns, not what the zset holds.
    """
    after = decode_cursor(cursor) if cursor else None
    picked: list[tuple[T, tuple[int, str]]] = []
    while len(picked) <= limit:
        batch = await _zset_after(redis, index_key, after, limit + 1, top, bottom)
        items = await load([member for _, member in batch]) if batch else []
        picked += [(item, position) for position, item in zip(batch, items) if item is not None]
        if len(batch) < limit + 1:
            break
        after = batch[-1]
    next_cursor = encode_cursor(*picked[limit - 1][1]) if len(picked) > limit else None
    return [item for item, _ in picked[:limit]], next_cursor


async def _zset_after(
    redis: Any, key: str, after: tuple[int, str] | None, count: int, top: str = "+inf", bottom: str = "-inf"
) -> list[tuple[int, str]]:
    """Up to ``count`` (score, member) of a zset, highest score first, strictly after
    the position ``after``, within ``top`` .. ``bottom``. Equal scores come in reverse
    member order (ZRANGE ... REV), so a position needs the member as well as the score."""
    if after is not None:
        top = str(after[0]) if top == "+inf" or after[0] < _bound(top) else top
    found: list[tuple[int, str]] = []
    offset = 0
    while len(found) < count:
        batch = await redis.zrange(key, top, bottom, desc=True, byscore=True, offset=offset, num=count, withscores=True)
        found += [(int(score), member) for member, score in batch if after is None or (int(score), member) < after]
        if len(batch) < count:
            break
        offset += count
    return found[:count]


def _bound(bound: str) -> float:
    return float(bound.lstrip("("))


def encode_cursor(score: int, member: str) -> str:
    return base64.urlsafe_b64encode(f"{score}:{member}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        score, sep, member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        if not sep:
            raise ValueError
        return int(score), member
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid(
            "query parameter cursor", "the nextCursor of an earlier page of this list, as it was given", "$.cursor"
        ) from None
