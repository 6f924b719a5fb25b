"""Pipeline stage parse, dates: a feed's date string to an aware datetime. The only module
importing dateparser.

RFC 822 and ISO 8601 are read first, strictly, keeping the offset the source wrote; anything
else (month and day names in other languages, CJK formats) goes to dateparser, restricted to
absolute dates that name a day, a month and a year. A time without an offset is read in the
feed's configured zone (else UTC). Dates outside ``EARLIEST``..``LATEST`` count as absent:
nothing downstream has to handle year 1 or year 9999.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timezone, tzinfo
from email.utils import parsedate_to_datetime
from functools import cache
from zoneinfo import ZoneInfo

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
# A date string longer than this is no date (and dateparser's cost grows with the length).
MAX_DATE_CHARS = 200

# Major European languages and CJK; naming them spares dateparser guessing among 200.
LANGUAGES = ("en", "de", "fr", "es", "pt", "it", "nl", "pl", "cs", "sk", "hu", "ro", "sv", "da",
             "nb", "fi", "el", "ru", "uk", "tr", "ca", "hr", "sl", "bg", "zh", "ja", "ko")
_DATEPARSER_SETTINGS = {
    # Absolute dates only: "yesterday" would depend on when we happen to read the feed.
    "PARSERS": ["custom-formats", "absolute-time"],
    "REQUIRE_PARTS": ["day", "month", "year"],
    "PREFER_DAY_OF_MONTH": "first",
}
_LOCK = threading.Lock()  # one DateDataParser shared by the threads of a run
_FOUR_DIGITS = re.compile(r"(?<![0-9])[0-9]{4}(?![0-9])")


def parse_date(raw: str | None, zone: str | None = None) -> datetime | None:
    """An aware datetime from a feed's date string, or None when there is no sane date in it.

    ``zone`` (an IANA name) is where a time without an offset is read; UTC when None.
    """
    if not raw:
        return None
    raw = " ".join(str(raw).split())
    if not raw or len(raw) > MAX_DATE_CHARS:
        return None
    when = _strict(raw)
    if when is None:
        with _LOCK:
            when = _dateparser().get_date_data(raw).date_obj
    return bounded(when, zone)


def bounded(when: datetime | None, zone: str | None = None) -> datetime | None:
    """``when`` made aware (a naive time is wall time in ``zone``, else UTC) if it falls between
    EARLIEST and LATEST, else None."""
    if when is None:
        return None
    if when.tzinfo is None or when.utcoffset() is None:
        when = when.replace(tzinfo=_zone(zone))
    try:
        inside = EARLIEST <= when <= LATEST
    except OverflowError:  # an offset that pushes the time past year 1 or 9999
        return None
    if not inside:
        return None
    # A plain fixed offset, whatever zone object dateparser or zoneinfo gave.
    return when.replace(tzinfo=timezone(when.utcoffset()))  # type: ignore[arg-type]


def _strict(raw: str) -> datetime | None:
    """RFC 822 (email.utils) or ISO 8601 (datetime.fromisoformat), naive or aware."""
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        when = None
    # email.utils reads any year below 100 as 19xx/20xx, also one written "0001".
    if when is not None and not _year_as_written(raw, when.year):
        when = None
    if when is not None:
        return when
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def _year_as_written(raw: str, year: int) -> bool:
    written = _FOUR_DIGITS.findall(raw)
    return not written or f"{year:04d}" in written


def _zone(name: str | None) -> tzinfo:
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError):  # the configuration checks zones; a bad one here is UTC
        return UTC


@cache
def _dateparser():  # type: ignore[no-untyped-def]
    # Imported on first use: most feeds' dates are RFC 822 or ISO 8601.
    from dateparser.date import DateDataParser

    return DateDataParser(languages=list(LANGUAGES), settings=_DATEPARSER_SETTINGS)
