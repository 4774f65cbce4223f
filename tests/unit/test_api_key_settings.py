"""CONCORD_API_KEYS: `tenant:key` is an admin key, `tenant/ROLE:key` a key of that
role; the n-th key's id is cfg-<n>; anything else is refused at start, naming the
entry without echoing the key."""

from __future__ import annotations

import pytest

from concord.server.principals import KeyGrant, decode_grant, encode_grant
from concord.server.settings import ConfigError, key_digest, parse_api_keys


def test_roles_and_ids_of_configured_keys():
    keys = parse_api_keys("acme:k1, acme/gate:k2,globex/read:k3,acme/enroll:k4,acme/admin:k5")
    assert keys == {
        key_digest("k1"): KeyGrant(id="cfg-1", tenant="acme", role="admin"),
        key_digest("k2"): KeyGrant(id="cfg-2", tenant="acme", role="gate"),
        key_digest("k3"): KeyGrant(id="cfg-3", tenant="globex", role="read"),
        key_digest("k4"): KeyGrant(id="cfg-4", tenant="acme", role="enroll"),
        key_digest("k5"): KeyGrant(id="cfg-5", tenant="acme", role="admin"),
    }


@pytest.mark.parametrize(
    "raw, says",
    [
        ("acme/owner:secret-1", "role 'owner' of a key of tenant 'acme' is not one of admin, enroll, gate, read"),
        ("acme/:secret-1", "role '' of a key of tenant 'acme'"),
        ("acme:secret-1,globex:secret-1", "one key is given twice ('acme' and 'globex')"),
        ("acme:secret-1,acme/gate:secret-1", "one key is given twice"),
        ("ac me:secret-1", "tenant 'ac me' must be"),
        ("acme", "is not of the form tenant[/role]:key"),
    ],
)
def test_a_malformed_entry_is_refused_naming_it(raw, says):
    with pytest.raises(ConfigError) as refused:
        parse_api_keys(raw)
    assert says in str(refused.value) and "secret-1" not in str(refused.value)


def test_a_grant_round_trips_and_a_legacy_value_is_an_admin_key():
    grant = KeyGrant(id="key_0123456789abcdef", tenant="acme", role="enroll", roles=("sdr",), created_at=17)
    assert decode_grant(encode_grant(grant).decode(), "f" * 64) == grant
    # Stored before keys had roles: the value was the tenant alone.
    assert decode_grant("acme", "ab" * 32) == KeyGrant(id=f"key_{'ab' * 8}", tenant="acme", role="admin")
