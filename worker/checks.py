"""What ``newsmon check`` refuses beyond the configuration's own validation: things that load
but cannot work (no feeds, a webhook secret no receiver can verify, a misspelt setting)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from worker.config import Config
from worker.settings import unknown_variables

# Standard Webhooks: "whsec_" + base64 of the key; keys of 24 to 64 bytes (Svix makes 24).
SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")

CHECKED = ("YAML syntax, keys and types", "${VAR} references", "durations have a unit",
           "watchlist and health webhooks exist", "at least one feed",
           f"webhook secrets are {SECRET_PREFIX} + base64 of {SECRET_BYTES[0]}-{SECRET_BYTES[1]} "
           "bytes", "environment settings", "no unknown NEWSMON_ variables")


def secret_problem(secret: str) -> str | None:
    """Why a webhook secret cannot sign verifiable deliveries, or None if it can."""
    if not secret.startswith(SECRET_PREFIX):
        return f"expected {SECRET_PREFIX} followed by base64 (a Standard Webhooks secret)"
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        return f"the part after {SECRET_PREFIX} is not base64"
    low, high = SECRET_BYTES
    if not low <= len(key) <= high:
        return (f"the key is {len(key)} bytes; Standard Webhooks keys are {low} to {high} "
                f"bytes (e.g. {SECRET_PREFIX} + `openssl rand -base64 32`)")
    return None


def referenced_variables(files: Iterable[str]) -> frozenset[str]:
    """The ${VAR} names the configuration files refer to."""
    names: set[str] = set()
    for file in files:
        try:
            names.update(_VAR.findall(Path(file).read_text(encoding="utf-8")))
        except OSError:
            continue
    return frozenset(names)


def config_problems(config: Config, env: Mapping[str, str],
                    referenced: frozenset[str] = frozenset()) -> list[str]:
    """Every reason this valid configuration still cannot work, one line each."""
    problems = []
    if not config.feeds:
        problems.append("feeds: no feeds are configured, so nothing would be polled; add a "
                        "`feeds:` list with at least one `- url: ...`")
    for name, hook in config.webhooks.items():
        for i, secret in enumerate(hook.secret):
            why = secret_problem(secret.get_secret_value().strip())
            if why:
                where = f"webhooks.{name}.secret" + (f"[{i}]" if len(hook.secret) > 1 else "")
                problems.append(f"{where}: {why}; receivers could never verify a delivery")
    for var in unknown_variables(dict(env), referenced):
        problems.append(f"environment: {var} is not a newsmon setting (a typo?); the settings "
                        "are listed in docs/configuration.md")
    return problems
