"""What requests are normalized to while they are decoded (the Structs'
``__post_init__``), so the server receives clean values: addresses in the form
keys carry, durations in milliseconds, ids of a shape that can name something.
Each rule raises errors.FieldError (or errors.UnknownId) naming the field."""

from __future__ import annotations

import re
from dataclasses import dataclass

from concord.protocol.errors import FieldError, UnknownId
from concord.protocol.events import EVENT_TYPES, FAMILIES, STREAM_ID
from concord.protocol.types import UUID

_LOCAL = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL = re.compile(rf"(?P<local>{_LOCAL})@(?P<domain>{_DOMAIN})")
_DOMAIN_ONLY = re.compile(_DOMAIN)
EMAIL_RULE = "an email address, local@domain.tld in ASCII, at most 254 characters"

# The prefix of each kind of id; the kind is what a 404 names ("no agent ...").
ID_PREFIXES = {"agent": "agent", "lease": "lease", "consensus": "cons"}
ID_PATTERNS = {kind: re.compile(f"{prefix}_{UUID}") for kind, prefix in ID_PREFIXES.items()}


def normalize_email(raw: str, field: str = "$.contactEmail") -> str:
    """Trim and lower-case an address, then check its shape. ASCII only, checked
    before lower-casing (U+212A KELVIN SIGN lower-cases to an ASCII "k"): an IDN
    domain goes in its xn-- form, so look-alike letters cannot pose as another
    contact. The normalized form is what keys and replies carry."""
    email = raw.strip().lower() if raw.isascii() else ""
    match = _EMAIL.fullmatch(email)
    if not match or len(email) > 254 or len(match["local"]) > 64:
        raise FieldError(field, EMAIL_RULE)
    return email


@dataclass(frozen=True, slots=True)
class ContactRules:
    """Which spellings of an address reach one mailbox, and so are one contact
    (docs/api.md, Contacts). The default follows the common providers: a ``+tag``
    is a sub-address everywhere, and Gmail ignores dots in the local part and
    answers at googlemail.com too."""

    subaddress_separator: str = "+"  # '' for none: every sub-address is a contact of its own
    dotless_domains: frozenset[str] = frozenset({"gmail.com"})
    domain_aliases: tuple[tuple[str, str], ...] = (("googlemail.com", "gmail.com"),)


DEFAULT_CONTACT_RULES = ContactRules()


def canonical_contact(address: str, rules: ContactRules = DEFAULT_CONTACT_RULES) -> str:
    """The contact a normalized address reaches: its sub-address dropped, its domain
    taken for the one it aliases, and, at a domain that ignores them, the dots of its
    local part removed. ``Alice.Smith+promo@googlemail.com`` is ``alicesmith@gmail.com``.
    A local part that is nothing but a sub-address (``+news@...``) stays as it is."""
    local, _, domain = address.rpartition("@")
    for alias, target in rules.domain_aliases:
        if domain == alias:
            domain = target
    if rules.subaddress_separator:
        base = local.split(rules.subaddress_separator, 1)[0]
        local = base or local
    if domain in rules.dotless_domains:
        local = local.replace(".", "")  # the address rule leaves a letter that is no dot
    return f"{local}@{domain}"


SUPPRESSION_RULE = "an email address, or @ and a domain (@bigcorp.com), in ASCII"


def suppression_entry(raw: str, field: str = "$.entry", rules: ContactRules = DEFAULT_CONTACT_RULES) -> str:
    """What a suppression is kept under: an address's canonical contact, or "@" and a
    domain (lower-cased, an alias taken for the domain it aliases), which suppresses
    every contact at that domain."""
    value = raw.strip().lower() if raw.isascii() else ""
    if value.startswith("@"):
        domain = value[1:]
        if len(domain) > 253 or not _DOMAIN_ONLY.fullmatch(domain):
            raise FieldError(field, SUPPRESSION_RULE)
        return "@" + dict(rules.domain_aliases).get(domain, domain)
    try:
        return canonical_contact(normalize_email(raw, field), rules)
    except FieldError:
        raise FieldError(field, SUPPRESSION_RULE) from None


def check_id(kind: str, value: str) -> str:
    """``value`` if it has the shape of a ``kind`` id; UnknownId (a 404) if not."""
    if not ID_PATTERNS[kind].fullmatch(value):
        raise UnknownId(kind, value)
    return value


def duration_ms(minutes: int | None, seconds: int | None, default_ms: int, names: tuple[str, str]) -> int:
    """One duration given in minutes or in seconds (not both), in milliseconds."""
    if minutes is not None and seconds is not None:
        raise FieldError(f"$.{names[1]}", f"give {names[0]} or {names[1]}, not both")
    if minutes is not None:
        return minutes * 60_000
    if seconds is not None:
        return seconds * 1000
    return default_ms


def event_types(raw: str | None, field: str = "$.type") -> frozenset[str]:
    """Comma-separated event types or families, as a set; each must be known."""
    types = frozenset(filter(None, (part.strip() for part in (raw or "").split(","))))
    unknown = sorted(types - set(EVENT_TYPES) - FAMILIES)
    if unknown:
        raise FieldError(
            field,
            f"{unknown[0]!r} is no event type; expected one of {', '.join(EVENT_TYPES)} "
            f"or a family ({', '.join(sorted(FAMILIES))})",
        )
    return types


def stream_id(raw: str, field: str) -> str:
    """An event id as a client gives it (``<ms>-<seq>``, ``<ms>`` or ``0``), each part below 2^64."""
    if not STREAM_ID.fullmatch(raw) or any(int(part) >= 2**64 for part in raw.split("-")):
        raise FieldError(field, "an event id such as 1764000000000-0, or 0 for the start")
    return raw
