"""The shortest string a regular expression matches, simply: for filling Apprise URL tokens
from the regexes Apprise publishes for them (tests/apprise_urls.py)."""

from __future__ import annotations

import re

try:  # Python 3.11+
    import re._constants as sre
    import re._parser as sre_parse
except ImportError:  # pragma: no cover
    import sre_constants as sre  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

_CATEGORY = {sre.CATEGORY_DIGIT: "1", sre.CATEGORY_WORD: "a", sre.CATEGORY_SPACE: " ",
             sre.CATEGORY_NOT_DIGIT: "a", sre.CATEGORY_NOT_WORD: "-", sre.CATEGORY_NOT_SPACE: "a"}
_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", sre.MAX_REPEAT)}


def example(pattern: str, flags: int = 0) -> str | None:
    """A string ``pattern`` matches (optional parts left out), or None if it is too clever."""
    try:
        text = _emit(sre_parse.parse(pattern, flags))
    except (ValueError, StopIteration, re.error):
        return None
    return text if re.match(pattern, text, flags) else None


def _one_of(items: list[tuple[object, object]]) -> str:
    if any(op is sre.NEGATE for op, _ in items):
        banned = {chr(v) for op, v in items if op is sre.LITERAL}  # type: ignore[arg-type]
        return next(c for c in "a1A_" if c not in banned)
    op, value = items[0]
    if op is sre.LITERAL:
        return chr(value)  # type: ignore[arg-type]
    if op is sre.RANGE:
        return chr(value[0])  # type: ignore[index]
    return _CATEGORY.get(value, "a")  # type: ignore[call-overload]


def _emit(parsed: object) -> str:
    out = []
    for op, value in parsed:  # type: ignore[attr-defined]
        if op is sre.LITERAL:
            out.append(chr(value))
        elif op is sre.NOT_LITERAL:
            out.append("b" if value == ord("a") else "a")
        elif op is sre.ANY:
            out.append("a")
        elif op is sre.IN:
            out.append(_one_of(value))
        elif op in _REPEATS:
            low, high, sub = value
            out.append(_emit(sub) * (low or (0 if high == 1 else 1)))
        elif op is sre.SUBPATTERN:
            out.append(_emit(value[-1]))
        elif op is sre.BRANCH:
            out.append(_emit(value[1][0]))
        elif op is sre.CATEGORY:
            out.append(_CATEGORY.get(value, "a"))
        elif op not in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            raise ValueError(f"unsupported regex element {op}")
    return "".join(out)
