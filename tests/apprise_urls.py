"""A usable URL for every scheme Apprise ships, built from the templates and token rules Apprise
publishes (``Apprise().details()``), so a plugin added by an Apprise upgrade is tested too."""

from __future__ import annotations

import re
from typing import Any

from tests.regex_example import example

# Values tried for a token, in order, before a string built from its regex.
CANDIDATES = ("A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6", "12345678", "+15551234567",
              "user@example.com", "channel")
# Schemes whose templates the generator cannot fill: written by hand (Apprise's own formats).
BY_HAND = {
    "signal": "signal://{host}:{port}/+15551234567",
    "signals": "signals://{host}:{port}/+15551234567",
    "twilio": "twilio://ACa1b2c3d4:abcdef123456@15551234567/15557654321",
    "humhub": "humhub://user:pass@{host}:{port}/abcdef12-3456-7890-abcd-ef1234567890",
    "humhubs": "humhubs://user:pass@{host}:{port}/abcdef12-3456-7890-abcd-ef1234567890",
}


def _apprise() -> Any:
    from worker.deliver import _apprise as loaded  # the plugins loaded, their warnings quiet

    return loaded()


def _value(name: str, token: dict[str, Any], host: str, port: int,
           tokens: dict[str, dict[str, Any]]) -> str:
    kind = token.get("type", "string")
    if name == "host" or token.get("map_to") == "host":
        return host
    if name == "port":
        return str(port)
    if kind.startswith("choice"):
        return str(token["values"][0])
    if kind in ("int", "float"):
        return str(max(int(token.get("min", 1)), 1))
    if kind == "bool":
        return "yes"
    if kind == "email" or "email" in name or name in ("from_addr", "from"):
        return "user@example.com"
    if kind.startswith("list") and token.get("group"):
        for member in sorted(token["group"]):
            sub = tokens.get(member, {})
            return sub.get("prefix", "") + _value(member, sub, host, port, tokens)
    rule = token.get("regex")
    if not rule:
        return "user" if name == "user" else CANDIDATES[0]
    flags = re.IGNORECASE if "i" in (rule[1] or "") else 0
    for candidate in (("user",) if name == "user" else ()) + CANDIDATES:
        if re.match(rule[0], candidate, flags):
            return candidate
    return example(rule[0], flags) or CANDIDATES[0]


def _fill(template: str, scheme: str, host: str, port: int,
          tokens: dict[str, dict[str, Any]]) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        return scheme if name == "schema" else _value(name, tokens.get(name, {}), host, port, tokens)

    return re.sub(r"\{(\w+)\}", value, template)


def schemes(skip: frozenset[str] = frozenset()) -> list[str]:
    """Every scheme of every enabled Apprise plugin."""
    out = set()
    for schema in _apprise().Apprise().details()["schemas"]:
        out |= set(schema.get("protocols") or ()) | set(schema.get("secure_protocols") or ())
    return sorted(out - skip)


def urls(host: str, port: int, skip: frozenset[str] = frozenset()) -> dict[str, str | None]:
    """scheme -> a URL Apprise accepts aimed at ``host:port`` where the service lets a URL
    name its server (None: no URL could be built)."""
    apprise = _apprise()
    out: dict[str, str | None] = {}
    for schema in apprise.Apprise().details()["schemas"]:
        details = schema["details"]
        tokens = details["tokens"]
        templates = sorted(details["templates"], key=lambda t: ("{host}" not in t, "{port}" not in t))
        for scheme in set(schema.get("protocols") or ()) | set(schema.get("secure_protocols") or ()):
            if scheme in skip:
                continue
            out[scheme] = None
            tries = [BY_HAND[scheme]] if scheme in BY_HAND else []
            tries += [_fill(t, scheme, name, port, tokens)
                      for name in (host, "example.com") for t in templates]
            for url in tries:
                url = url.format(host=host, port=port) if "{" in url else url
                if apprise.Apprise.instantiate(url) is not None:
                    out[scheme] = url
                    break
    return out
