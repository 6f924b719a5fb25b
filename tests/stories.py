"""Helpers for the alert shaping tests: distinct stories, a configuration with shaped
watchlists, and what a receiver got, verified (Standard Webhooks and the schema)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

from tests.deliveries import hook, posts, verified
from tests.feeds import item, rss

RSS = {"Content-Type": "application/rss+xml"}
_SYLLABLES = ["ka", "to", "mi", "ra", "ne", "su", "lo", "pe", "di", "gu", "ba", "zo", "ve", "chi"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def story(n: int, *, lead: str = "LNG", filler: int = 3) -> str:
    """A story no other ``n`` resembles (the dedupe stage keeps them apart): a first paragraph
    naming ``lead`` (or not, when empty) and ``filler`` paragraphs of made-up words."""
    rng = random.Random(n)
    words = [_word(rng) for _ in range(60)]
    first = f"Officials said {lead} shipments changed in {' '.join(words[:12])}." if lead else \
        f"Officials said shipments changed in {' '.join(words[:12])}."
    rest = [" ".join(rng.choice(words) for _ in range(40)) + "." for _ in range(filler)]
    return "\n".join([first, *rest])


def entry(n: int, title: str | None = None, body: str | None = None, *, site: str = "wire",
          **kw: Any) -> dict[str, Any]:
    return item(n, title or f"LNG story {n}", body or story(n),
                link=kw.pop("link", f"https://{site}.example/story/{n}"), **kw)


def serve(server: Any, path: str, entries: list[dict[str, Any]], title: str = "Test Wire") -> None:
    server.routes[path] = (200, RSS, rss(entries, title=title))


def write_config(folder: Path, server: Any, watchlists: list[dict[str, Any]],
                 feeds: tuple[str, ...] = ("/a",), every: str = "5m") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for wl in watchlists:
        wl.setdefault("entities", ["LNG"])
        wl.setdefault("webhook", "desk")
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "feeds": [{"url": server.url(p), "name": p.strip("/"), "every": every,
                   "full_text": "never"} for p in feeds],
        "webhooks": {"desk": hook(server.url("/hook"))},
        "watchlists": watchlists}))


def events(server: Any, path: str = "/hook") -> list[dict[str, Any]]:
    """Every event the receiver got, each verified; a second copy of one webhook-id (a
    retry after a lost answer) is left out, so a duplicate event would show as two."""
    seen, out = set(), []
    for request in posts(server, path):
        payload = verified(request)
        if request["headers"]["webhook-id"] not in seen:
            seen.add(request["headers"]["webhook-id"])
            out.append({**payload, "webhook_id": request["headers"]["webhook-id"]})
    return out


def of_type(evts: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in evts if e["type"] == kind]


def titles(alerts: list[dict[str, Any]]) -> list[str]:
    return sorted(a["article"]["title"] for a in alerts)
