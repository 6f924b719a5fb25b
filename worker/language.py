"""Which language an article is written in, for the query language's ``lang:``.

The only module that imports py3langid (its model ships inside the package: nothing is
downloaded). Detection reads the title and the first ``SAMPLE`` characters of the body, which
takes about 0.5 ms; the match stage asks only when a watchlist's query tests ``lang:``.
"""

from __future__ import annotations

import threading

from py3langid.langid import MODEL_FILE, LanguageIdentifier

SAMPLE = 2000
_lock = threading.Lock()
_identifier: list[LanguageIdentifier] = []


def _model() -> LanguageIdentifier:
    """The model, loaded once per process (0.5 s) by whichever thread asks first."""
    if not _identifier:
        with _lock:
            if not _identifier:
                _identifier.append(LanguageIdentifier.from_model_file(MODEL_FILE))
    return _identifier[0]


def detect_language(title: str, body: str) -> str:
    """The code of the text's language: ISO 639-1 where one exists (``en``, ``ja``), else
    ISO 639-3 (``ary``); "" for a text without letters."""
    text = f"{title}\n{body[:SAMPLE]}"
    if not any(c.isalpha() for c in text):
        return ""
    return str(_model().classify(text)[0])

