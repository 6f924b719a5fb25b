"""Builders of feed documents for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html import escape

LNG_STORY = (
    "Japan's imports of liquefied natural gas rose sharply in January as utilities stocked up "
    "for a cold snap that pushed power demand to a record, the finance ministry said on "
    "Thursday. Shipments from Australia and the United States made up most of the increase, "
    "while cargoes from Russia fell for a third month. Traders said spot prices in Asia eased "
    "later in the week as mild weather returned to northern Japan and inventories recovered."
)
RICE_STORY = (
    "Farmers in Niigata expect a larger rice harvest this autumn after a wet spring, the "
    "prefecture's agriculture office said, easing worries about the price of the staple that "
    "has climbed for months. Wholesalers said stocks held by cooperatives were still below "
    "last year's level and retail prices would take time to fall back."
)


def item(n: int, title: str, body: str, *, link: str | None = None, hours: int = 0) -> dict:
    when = datetime(2025, 2, 6, 11, tzinfo=UTC) + timedelta(hours=hours)
    return {"title": title, "body": body, "link": link or f"https://news.example/story/{n}",
            "guid": f"urn:story:{n}", "date": when.strftime("%a, %d %b %Y %H:%M:%S +0000")}


def rss(items: list[dict], title: str = "Test Wire", ttl: int | None = None) -> bytes:
    parts = []
    for it in items:
        paragraphs = "".join(f"<p>{escape(p)}</p>" for p in it["body"].split("\n"))
        parts.append(
            f"<item><title>{escape(it['title'])}</title><link>{escape(it['link'])}</link>"
            f"<guid isPermaLink='false'>{it['guid']}</guid><pubDate>{it['date']}</pubDate>"
            f"<dc:creator>Staff</dc:creator>"
            f"<content:encoded><![CDATA[{paragraphs}]]></content:encoded></item>")
    ttl_tag = f"<ttl>{ttl}</ttl>" if ttl else ""
    return ("<?xml version='1.0' encoding='utf-8'?><rss version='2.0' "
            "xmlns:dc='http://purl.org/dc/elements/1.1/' "
            "xmlns:content='http://purl.org/rss/1.0/modules/content/'><channel>"
            f"<title>{escape(title)}</title><link>https://news.example/</link>{ttl_tag}"
            f"{''.join(parts)}</channel></rss>").encode()
