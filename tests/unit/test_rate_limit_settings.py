"""CONCORD_RATE_LIMITS as settings.parse_rate_limits reads it (docs/configuration.md,
Rate limits): unset or empty gives the in-process defaults; a value names its
limits and leaves the in-process scopes it does not name at their defaults (the
Redis ones off); SCOPE=off removes one scope, and `off` alone every limit. A
malformed value is refused naming the variable (tests/api/test_rate_limits.py
runs `concord serve` on each)."""

from __future__ import annotations

import pytest

from concord.server.settings import (
    DEFAULT_RATE_LIMITS,
    ConfigError,
    RateLimit,
    Settings,
    parse_rate_limits,
)

DEFAULTS = {"principal": RateLimit(100.0, 200), "key": RateLimit(2000.0, 4000)}


def test_unset_or_empty_gives_the_documented_defaults():
    assert DEFAULT_RATE_LIMITS == DEFAULTS
    assert Settings.from_env({}).rate_limits == DEFAULTS
    assert Settings.from_env({"CONCORD_RATE_LIMITS": ""}).rate_limits == DEFAULTS
    assert Settings.from_env({"CONCORD_RATE_LIMITS": " , "}).rate_limits == DEFAULTS
    assert Settings().rate_limits == DEFAULTS  # as the app builds it in tests, too


def test_rate_limits_parse_as_documented():
    assert parse_rate_limits("tenant=1000/s,agent=20/s:40") == {
        **DEFAULTS,
        "tenant": RateLimit(1000.0, 1000),
        "agent": RateLimit(20.0, 40),
    }
    assert parse_rate_limits(" tenant=60/m , agent=7200/h:5 ") == {
        **DEFAULTS,
        "tenant": RateLimit(1.0, 60),
        "agent": RateLimit(2.0, 5),
    }
    assert parse_rate_limits("agent=1/h") == {**DEFAULTS, "agent": RateLimit(1 / 3600, 1)}


def test_the_in_process_scopes_left_out_keep_their_defaults():
    assert parse_rate_limits("principal=50/s:100") == {"principal": RateLimit(50.0, 100), "key": DEFAULTS["key"]}
    assert parse_rate_limits("key=600/m") == {"principal": DEFAULTS["principal"], "key": RateLimit(10.0, 600)}
    assert parse_rate_limits("principal=1000000/s,key=1000000/s:1000000") == {
        "principal": RateLimit(1_000_000.0, 1_000_000),
        "key": RateLimit(1_000_000.0, 1_000_000),
    }


def test_off_removes_a_scope_or_every_limit():
    assert parse_rate_limits("principal=off") == {"key": DEFAULTS["key"]}
    assert parse_rate_limits("principal=off,key=off") == {}
    assert parse_rate_limits("principal=off,key=off,tenant=1000/s") == {"tenant": RateLimit(1000.0, 1000)}
    assert parse_rate_limits("tenant=off") == DEFAULTS  # off already
    for value in ("off", " off ", "OFF"):
        assert Settings.from_env({"CONCORD_RATE_LIMITS": value}).rate_limits == {}


@pytest.mark.parametrize(
    "value, says",
    [
        ("off,tenant=10/s", "'off' is not SCOPE=COUNT/UNIT[:BURST] or SCOPE=off"),
        ("principal=off,principal=10/s", "principal is limited twice"),
        ("key=10/s,key=off", "key is limited twice"),
        ("principal=0/s", "COUNT and BURST must be 1 to 1,000,000"),
        ("key=10/s:1000001", "COUNT and BURST must be 1 to 1,000,000"),
        ("principal=none", "with SCOPE principal, key, tenant, agent"),
        ("user=10/s", "with SCOPE principal, key, tenant, agent"),
    ],
)
def test_a_malformed_value_is_refused_naming_it(value, says):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"CONCORD_RATE_LIMITS": value})
    assert str(refused.value).startswith("CONCORD_RATE_LIMITS: ") and says in str(refused.value), refused.value
