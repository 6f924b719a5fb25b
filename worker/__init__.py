"""newsmon: feeds in, deduplicated stories, watchlist alerts out as signed webhooks."""

__version__ = "0.1.0"
USER_AGENT = f"newsmon/{__version__} (+https://github.com/newsmon/newsmon)"
