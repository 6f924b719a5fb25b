"""Helpers for the delivery tests: alert records as the pipeline makes them, a config folder,
and checks of what a receiver got (Standard Webhooks signatures, the published schema)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from standardwebhooks import Webhook

from worker.dump import dump_of, render_dump
from worker.models import Article, Match, WatchlistHit
from worker.pipeline import alert_json
from worker.service import Service
from worker.settings import Settings
from worker.store import Store

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_2 = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="
SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "webhook-payload.schema.json")
                    .read_text())
BODY = ("Japan's imports of liquefied natural gas rose in January as utilities stocked up for a "
        "cold snap, the finance ministry said on Thursday.")


def article(n: int = 1, title: str = "Japan LNG imports rise") -> Article:
    return Article(id=f"{n:016x}", canonical_url=f"https://news.example/story/{n}",
                   url=f"https://news.example/story/{n}?utm_source=feed", guid=f"urn:{n}",
                   title=title, author="Staff", source="Test Wire",
                   published=datetime(2025, 2, 6, 20, 30, tzinfo=timezone(timedelta(hours=9))),
                   paragraphs=(BODY,), feed="https://news.example/rss")


def make_alert(store: Store, watchlist: str, n: int = 1, story: str | None = None) -> str:
    """Record an alert exactly as the pipeline does; returns its id."""
    art = article(n)
    story_id = story or art.id
    store.r.hset(store.keys.story(story_id), mapping={"first": art.id, "copies": 1})
    hit = WatchlistHit(watchlist, ("LNG",), (
        Match("LNG", "LNG", "title", 6, 9, "Japan LNG imports rise"),
        Match("LNG", "liquefied natural gas", "body", 25, 46, BODY)))
    record = alert_json(hit, art, story_id, render_dump(dump_of(art)), time.time())
    alert_id, created = store.claim_alert(story_id, watchlist, record["id"], record, time.time())
    assert created
    return alert_id


def write_config(folder: Path, webhooks: dict[str, Any], watchlists: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for wl in watchlists:
        wl.setdefault("entities", ["LNG"])
    (folder / "config.yaml").write_text(yaml.safe_dump({"webhooks": webhooks,
                                                        "watchlists": watchlists}))


def make_service(tmp_path: Path, redis_url: str, webhooks: dict[str, Any],
                 watchlists: list[dict[str, Any]]) -> Service:
    write_config(tmp_path / "config", webhooks, watchlists)
    settings = Settings.from_env({"NEWSMON_CONFIG": str(tmp_path / "config"),
                                  "NEWSMON_DUMP_DIR": str(tmp_path / "dump"),
                                  "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8"})
    return Service(settings, redis_url)


def hook(url: str, *secrets: str, retry: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"url": url, "secret": list(secrets) or [SECRET]}
    if retry is not None:
        out["retry"] = retry
    return out


def verified(request: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    """The payload of a received request, after standardwebhooks verified it and the schema
    validated it."""
    payload = Webhook(secret).verify(request["body"], request["headers"])
    jsonschema.validate(payload, SCHEMA)
    return payload


def posts(server: Any, path: str) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["path"] == path and r["method"] == "POST"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
