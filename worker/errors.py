"""Every error newsmon raises, as one tree, so a caller knows what to catch.

    NewsmonError                 base of everything below
    ├── ConfigError              bad configuration: names the file, key path and what was expected
    ├── QuerySyntaxError         a watchlist query that does not parse: the column, what was expected
    ├── NotAFeedError            bytes that are no RSS, Atom or JSON Feed (says what was received)
    ├── BadEntryError            one feed entry that cannot become an article (the others go on)
    ├── DumpFormatError          a file that is not in the dump format
    ├── FetchError               a fetch failed; ``reason`` is a short user-facing cause
    │   ├── TransientFetchError  may succeed next time: DNS, connect, timeout, 5xx, 429
    │   └── PermanentFetchError  won't get better by retrying now: refused address, 4xx, size cap
    ├── DeliveryError            a webhook or notification attempt failed
    │   ├── TransientDeliveryError   5xx, 408, 429, timeouts, connection errors: retry later
    │   └── PermanentDeliveryError   other 4xx, refused address: dead-letter at once
    └── ServiceError             the service cannot start here (says what to do instead)
        └── DataDirBusy          another process holds the data folder's lock

Transient errors are the only ones worth retrying. All of them keep their
arguments in ``args`` so that they survive pickling (Celery serializes them).
"""

from __future__ import annotations


class NewsmonError(Exception):
    """Base class of every error newsmon raises on purpose."""


class ConfigError(NewsmonError):
    """The configuration is invalid; ``problems`` lists each one as `file: path: message`."""

    def __init__(self, problems: list[str] | str):
        if isinstance(problems, str):
            problems = [problems]
        super().__init__(problems)
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class QuerySyntaxError(NewsmonError, ValueError):
    """A watchlist query that does not parse. A ValueError too, so that the configuration's
    validators report it under the key path (``watchlists[2].query: column 14: ...``)."""

    def __init__(self, column: int, message: str):
        super().__init__(column, message)
        self.column = column            # 1-based, in characters of the query
        self.message = message

    def __str__(self) -> str:
        return f"column {self.column}: {self.message}"


class NotAFeedError(NewsmonError):
    """The bytes are not a feed; the message says what they look like instead."""


class BadEntryError(NewsmonError):
    """One entry of a feed cannot become an article; the message says why. Skip it, keep the rest."""


class DumpFormatError(NewsmonError):
    """A text that does not follow the dump format."""


class FetchError(NewsmonError):
    """A fetch failed. ``reason`` is a short cause a user can act on; ``status`` the HTTP status."""

    def __init__(self, reason: str, url: str = "", status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(reason, url, status, retry_after)
        self.reason = reason
        self.url = url
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.reason


class TransientFetchError(FetchError):
    """A fetch failure that may succeed next time."""


class PermanentFetchError(FetchError):
    """A fetch failure that retrying soon will not fix."""


class DeliveryError(NewsmonError):
    """A delivery attempt failed. ``reason`` is user-facing; ``status`` the HTTP status if any."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason, status, retry_after)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.reason


class TransientDeliveryError(DeliveryError):
    """Worth retrying later."""


class PermanentDeliveryError(DeliveryError):
    """Not worth retrying: dead-letter the alert."""


class ServiceError(NewsmonError):
    """The service cannot start: the embedded Redis does not come up, and the like."""


class DataDirBusy(ServiceError):
    """Another newsmon process owns the data folder (and its embedded Redis)."""
