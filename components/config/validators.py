"""Plain functions that check one raw config value and return its canonical form, or raise ValueError.

Each message says what was wrong and what is allowed, without the key (the loader adds it) and without echoing
anything that could be a secret. `types.py` wraps these into reusable `Annotated` field types; they are tested on
their own in tests/infra/test_config_validators.py.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_MS = {"ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}


def parse_duration_ms(text: str) -> int:
    """Parse a Go duration such as `90s`, `1m30s` or `500ms` into whole milliseconds; ValueError otherwise."""
    text = text.strip()
    if text == "0":
        return 0
    if not text or _DURATION_PART.sub("", text):
        raise ValueError(text)
    total = sum((Decimal(number) * _UNIT_MS[unit] for number, unit in _DURATION_PART.findall(text)), Decimal(0))
    if total != total.to_integral_value():
        raise ValueError(text)
    return int(total)


def go_duration(ms: int) -> str:
    """Format milliseconds the way Go's time.Duration.String does (Docker reads durations back in this form)."""
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = format(Decimal(rest) / 1000, "f").rstrip("0").rstrip(".") if rest % 1000 else str(rest // 1000)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def canonical_duration(raw: Any, positive: bool) -> str:
    """A Go duration in the form Docker reads back (`60s` -> `1m0s`); `positive` refuses `0s`."""
    text = text_value(raw, allow_empty=True)
    try:
        ms = parse_duration_ms(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 2m or 1m30s (ms, s, m, h)") from None
    if positive and ms <= 0:
        raise ValueError(f"{text!r} is not allowed; must be longer than 0s")
    return go_duration(ms)


def optional_duration(raw: Any) -> str | None:
    """Empty: off (None); otherwise a positive canonical duration."""
    return canonical_duration(raw, positive=True) if text_value(raw, allow_empty=True) else None


def canonical_cpus(text: str) -> str:
    """Format a CPU count the way the provider reads NanoCPUs back: 0.5 -> "0.5", 1 -> "1.0"; ValueError otherwise."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ValueError(text) from exc
    nano = value * 1_000_000_000
    if not value.is_finite() or value <= 0 or nano != nano.to_integral_value():
        raise ValueError(text)
    rendered = format(value.normalize(), "f")
    return rendered if "." in rendered else f"{rendered}.0"


def cpus(raw: Any) -> str:
    """A CPU limit in canonical form."""
    text = text_value(raw, allow_empty=True)
    try:
        return canonical_cpus(text)
    except ValueError:
        raise ValueError(f"{text!r} is not allowed; must be a positive number of CPUs such as 0.5") from None


def text_value(raw: Any, allow_empty: bool = False) -> str:
    """A stripped string; empty is refused unless allowed."""
    value = "" if raw is None else str(raw).strip()
    if not value and not allow_empty:
        raise ValueError("must not be empty")
    return value


def flag(raw: Any) -> bool:
    """`true` or `false` (the way the Pulumi CLI stores a boolean), nothing looser."""
    if isinstance(raw, bool):
        return raw
    value = text_value(raw, allow_empty=True).lower()
    if value not in ("true", "false"):
        raise ValueError(f"{value!r} is not allowed; use true or false")
    return value == "true"


def optional_flag(raw: Any) -> str:
    """`true`, `false`, or empty (the API decides); kept as text so that empty stays distinct from false."""
    value = text_value(raw, allow_empty=True).lower()
    if value not in ("", "true", "false"):
        raise ValueError(f"{value!r} is not allowed; use true or false, or leave it empty")
    return value


def whole_number(raw: Any, minimum: int, maximum: int | None = None, unit: str = "") -> int:
    """An integer within bounds; the message says the bounds (and the unit)."""
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a whole number")
    if isinstance(raw, int):
        value = raw
    else:
        text = text_value(raw, allow_empty=True)
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}{unit}"
        raise ValueError(f"{value}{unit} is not allowed; must be {allowed}")
    return value


def one_of(raw: Any, allowed: tuple[str, ...]) -> str:
    """One of the allowed words."""
    value = text_value(raw, allow_empty=True)
    if value not in allowed:
        raise ValueError(f"{value!r} is not allowed; use one of: {', '.join(allowed)}")
    return value


def matching(raw: Any, pattern: str, allowed: str) -> str:
    """A value matching `pattern` in full; `allowed` says in words what matches."""
    value = text_value(raw, allow_empty=True)
    if not re.fullmatch(pattern, value):
        raise ValueError(f"{value!r} is not allowed; expected {allowed}")
    return value


def executable(raw: Any) -> str:
    """One executable name (no arguments, no shell syntax)."""
    value = text_value(raw)
    if shlex.split(value) != [value]:
        raise ValueError(f"{value!r} is not allowed; expected one executable name")
    return value


def ip_address(raw: Any) -> str:
    """An IPv4 or IPv6 address in canonical form."""
    value = text_value(raw)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def http_url(raw: Any, allow_empty: bool = False) -> str:
    """An http(s) URL with a host; empty only if allowed. The message never repeats the URL (it may hold a token)."""
    value = text_value(raw, allow_empty=True)
    if not value and allow_empty:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        raise ValueError("is not allowed; expected an http(s) URL")
    return value


def string_list(raw: Any, what: str, example: str) -> list[str]:
    """A list of strings: a list, or the JSON text the Pulumi CLI hands the program for an array key."""
    items = raw
    if isinstance(raw, str):
        try:
            items = json.loads(raw or "[]")
        except json.JSONDecodeError:
            items = None
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"must be a list of {what}, e.g. {example}")
    return [item.strip() for item in items]


def cidr_list(raw: Any) -> list[str]:
    """CIDRs in canonical form (host bits cleared)."""
    items = string_list(raw, "CIDRs", '["203.0.113.10/32"]')
    try:
        return [str(ipaddress.ip_network(item, strict=False)) for item in items]
    except ValueError as exc:
        raise ValueError(f"not a CIDR: {exc}") from None


def origin_list(raw: Any) -> list[str]:
    """Browser origins (`scheme://host[:port]`, no path), or `*`."""
    items = string_list(raw, "origins", '["https://app.example.com"]')
    for origin in items:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path):
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com (or *)")
    return items


def cluster_id_list(raw: Any) -> list[str]:
    """Novita cluster ids such as `us-ca-6`, each listed once."""
    items = string_list(raw, "Novita cluster ids", '["us-ca-6", "as-sgp-2"]')
    for cluster in items:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", cluster):
            raise ValueError(f"{cluster!r} is not a cluster id like us-ca-6")
    if len(set(items)) != len(items):
        raise ValueError("lists a cluster id twice")
    return items


_DOCKER_HOST = re.compile(
    r"ssh://([a-zA-Z0-9._-]+@)?[a-zA-Z0-9.-]+(:\d{1,5})?"
    r"|tcp://[a-zA-Z0-9.-]+:\d{1,5}"
    r"|unix:///[a-zA-Z0-9._/-]+"
)


def docker_host_list(raw: Any, forms: str) -> list[str]:
    """Docker engine URLs (`forms` says which, in words), each listed once."""
    items = string_list(raw, "Docker host URLs", '["ssh://deploy@api-a"]')
    for index, host in enumerate(items):
        if not _DOCKER_HOST.fullmatch(host):
            raise ValueError(f"item {index} {host!r} is not a Docker host URL; use {forms}")
    if len(set(items)) != len(items):
        raise ValueError("lists a host twice")
    return items


_DNS_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})+")


def domain_name(raw: Any) -> str:
    """A fully qualified DNS name such as api.example.com (lower-cased), or empty; no scheme, port or path."""
    value = text_value(raw, allow_empty=True).lower().rstrip(".")
    if value and (len(value) > 253 or not _DOMAIN.fullmatch(value)):
        raise ValueError(
            f"{value!r} is not allowed; expected a DNS name such as api.example.com (no scheme, port or path)"
        )
    return value


def email_address(raw: Any) -> str:
    """An email address such as ops@example.com, or empty."""
    value = text_value(raw, allow_empty=True)
    local, _, domain = value.partition("@")
    if value and not (re.fullmatch(r"[A-Za-z0-9._%+-]+", local) and _DOMAIN.fullmatch(domain.lower())):
        raise ValueError(f"{value!r} is not allowed; expected an email address such as ops@example.com")
    return value
