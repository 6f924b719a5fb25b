"""Story identity, the dedupe stage: canonical URLs, content fingerprints, near-duplicates.

Pure functions on plain data, and the story index contract with an in-memory implementation;
the service backs the index with Redis (see ``store``). The rules are in docs/dedupe.md.
"""

from __future__ import annotations

import hashlib
import heapq
import operator
import re
import unicodedata
from array import array
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from datasketch import MinHash

from worker.models import Article

# Query parameters that only say how a reader arrived, never which page they get.
TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "gclsrc", "dclid", "msclkid", "mc_cid", "mc_eid", "igshid", "yclid",
    "twclid", "ttclid", "li_fat_id", "wbraid", "gbraid", "_ga", "_gl", "_hsenc", "_hsmi",
    "mkt_tok", "oly_anon_id", "oly_enc_id", "vero_id", "rb_clickid", "s_cid", "ncid", "cmpid",
})
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "hsa_")
DEFAULT_PORTS = {"http": 80, "https": 443}


def _is_tracking(name: str) -> bool:
    lowered = name.lower()
    return lowered in TRACKING_PARAMS or lowered.startswith(TRACKING_PREFIXES)


def canonical_url(url: str) -> str:
    """The URL that identifies a page: lowercase scheme and host, no default port, no fragment,
    no tracking parameters, remaining query parameters sorted. Idempotent. A malformed URL
    (a bad port or IPv6 literal) is returned as given, stripped: a feed's typo must not stop
    its entries."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return url.strip()
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    if parts.username or parts.password:
        userinfo = parts.username or ""
        if parts.password:
            userinfo += f":{parts.password}"
        netloc = f"{userinfo}@{netloc}"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                   if not _is_tracking(k))
    path = parts.path or ("/" if host else "")
    return urlunsplit((scheme, netloc, path, urlencode(query), ""))


# --- Exact content identity -------------------------------------------------------------------

# Apostrophes vanish ("Japan’s" and "Japan's" -> "japans"), and so do the dots of a one-letter
# acronym ("U.S." -> "us"), so typographic variants of a reprint give the same words.
_JOINERS = re.compile(r"['’ʼ`´]|(?<=\b\w)\.(?=\w\b)")
_SEPARATORS = re.compile(r"[\W_]+")


def words(title: str, body: str) -> list[str]:
    """The words of title and body as dedupe compares them: NFKC, casefolded, no punctuation."""
    text = unicodedata.normalize("NFKC", f"{title}\n{body}").casefold()
    return [word for word in _SEPARATORS.split(_JOINERS.sub("", text)) if word]


def fingerprint(title: str, body: str) -> str:
    """32 hex digits (a sha256 prefix) of the text's words: reprints that differ only in case,
    punctuation, quotes or spacing share it."""
    return _fingerprint(words(title, body))


def _fingerprint(tokens: list[str]) -> str:
    return hashlib.sha256(" ".join(tokens).encode()).hexdigest()[:32]


# --- Near-duplicates: MinHash over word 3-shingles -------------------------------------------

NUM_PERM = 128
SHINGLE_WORDS = 3
# Changing any of these (or datasketch's scheme) changes every signature and band key, and the
# stored index must then be dropped. test_signature_values_are_pinned guards against drift.
MINHASH_SEED = 1
MINHASH_SCHEME = "affine32"  # 32-bit values: each fits the 8 hex digits of sig_to_hex
BANDS, ROWS = 32, 4          # P(candidate) = 1 - (1 - J**ROWS)**BANDS; see docs/dedupe.md
THRESHOLD = 0.6              # estimated Jaccard at or above which two texts are one story

# Drawing the permutations costs more than hashing a whole article: draw them once.
_PERMUTATIONS = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED, scheme=MINHASH_SCHEME).permutations


def shingles(tokens: list[str]) -> set[bytes]:
    """Every run of SHINGLE_WORDS consecutive words; a shorter text is one shingle."""
    if len(tokens) <= SHINGLE_WORDS:
        return {" ".join(tokens).encode()} if tokens else set()
    return {" ".join(tokens[i:i + SHINGLE_WORDS]).encode()
            for i in range(len(tokens) - SHINGLE_WORDS + 1)}


def signature(title: str, body: str) -> tuple[int, ...]:
    """The MinHash of the text's word 3-shingles: NUM_PERM values below 2**32, the same on
    every machine and in every process; () for a text without words."""
    return _signature(words(title, body))


def _signature(tokens: list[str]) -> tuple[int, ...]:
    found = shingles(tokens)
    if not found:
        return ()
    minhash = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED, scheme=MINHASH_SCHEME,
                      permutations=_PERMUTATIONS)
    minhash.update_batch(found)
    return tuple(minhash.hashvalues.tolist())


def similarity(sig_a: Sequence[int], sig_b: Sequence[int]) -> float:
    """Estimated Jaccard similarity of two texts' shingles: the fraction of equal slots.
    0.0 when either signature is empty."""
    if not sig_a or not sig_b:
        return 0.0
    if len(sig_a) != len(sig_b):
        raise ValueError(f"signatures of {len(sig_a)} and {len(sig_b)} values are not comparable")
    return sum(map(operator.eq, sig_a, sig_b)) / len(sig_a)


def same_story(sig_a: Sequence[int], sig_b: Sequence[int]) -> bool:
    """Whether two signatures are copies of one story: similarity at or above THRESHOLD."""
    return similarity(sig_a, sig_b) >= THRESHOLD


def sig_to_hex(sig: Sequence[int]) -> str:
    """The signature as 8 hex digits a value, so a Lua script can compare it slot by slot."""
    return "".join(f"{value:08x}" for value in sig)


def sig_from_hex(packed: str) -> tuple[int, ...]:
    """The inverse of sig_to_hex."""
    if len(packed) % 8:
        raise ValueError(f"a packed signature has 8 hex digits a value, got {len(packed)}")
    return tuple(int(packed[i:i + 8], 16) for i in range(0, len(packed), 8))


def band_keys(sig: Sequence[int]) -> tuple[str, ...]:
    """One key a band of ROWS slots, "<band>:<its ROWS*8 hex digits>". Texts that agree on every
    row of some band are candidates. Each key is a slice of sig_to_hex, so Lua can derive it."""
    packed, width = sig_to_hex(sig), ROWS * 8
    return tuple(f"{band}:{packed[band * width:(band + 1) * width]}"
                 for band in range(len(sig) // ROWS))


# --- Story keys --------------------------------------------------------------------------------

# Fewer words (a headline-only item such as "Markets live") are too generic to name a story by
# content: such an article is known by its URL and GUID only.
MIN_CONTENT_WORDS = 10


@dataclass(frozen=True)
class StoryKeys:
    """What identifies the story an article tells. None: the article has no such key; an empty
    fingerprint, signature and bands: too little text to compare."""

    url: str | None
    guid: str | None
    fingerprint: str
    signature: tuple[int, ...]
    bands: tuple[str, ...]


def story_keys(article: Article) -> StoryKeys:
    """The keys a story index looks the article up by."""
    url = _identity_url(article.canonical_url or article.url)
    guid = _identity_guid(article.guid, article.url, url)
    tokens = words(article.title, article.body)
    if len(tokens) < MIN_CONTENT_WORDS:
        return StoryKeys(url=url, guid=guid, fingerprint="", signature=(), bands=())
    sig = _signature(tokens)
    return StoryKeys(url=url, guid=guid, fingerprint=_fingerprint(tokens), signature=sig,
                     bands=band_keys(sig))


def _identity_url(link: str) -> str | None:
    if not link.strip():
        return None
    url = canonical_url(link)
    parts = urlsplit(url)
    if parts.path in ("", "/") and not parts.query:
        return None  # some feeds link every item to their home page, which names no story
    return url


def _identity_guid(guid: str | None, link: str, url: str | None) -> str | None:
    guid = (guid or "").strip()
    if not guid or guid == link or canonical_url(guid) == url:
        return None  # just the link again, which the URL key covers
    return guid


def exact_keys(keys: StoryKeys) -> tuple[str, ...]:
    """The exact keys in the order an index tries them: "url:…", "guid:…", "fp:…"."""
    pairs = (("url", keys.url), ("guid", keys.guid), ("fp", keys.fingerprint))
    return tuple(f"{kind}:{value}" for kind, value in pairs if value)


# --- The story index ---------------------------------------------------------------------------

RETENTION_SECONDS = 30 * 24 * 3600
# A copy at the threshold shares ~4 of 32 bands with its story, a look-alike story mostly one:
# comparing only the best-sharing candidates bounds the work when many stories look alike.
MAX_CANDIDATES = 8


class StoryIndex(Protocol):
    """Maps copies of an article to one story id. The service backs it with Redis."""

    def claim(self, keys: StoryKeys, new_story_id: str, now: float) -> tuple[str, bool]:
        """(story_id, False) when the keys name a known story, else (new_story_id, True).
        Either way the copy's keys are recorded under the returned story."""
        ...


@dataclass
class _Story:
    signature: array   # the first copy's signature, as array("I") (a tuple costs 8x the memory)
    bands: tuple[str, ...]
    seen: float        # when a copy was last claimed


class MemoryStoryIndex:
    """A StoryIndex in dicts, for the offline CLI and tests; the Redis index mirrors it.

    ``claim`` looks the copy up in three steps and takes the first answer:

    1. exact keys in the order of ``exact_keys`` (URL, GUID, fingerprint);
    2. stories that share a band key with the copy are candidates; the MAX_CANDIDATES sharing
       the most bands (ties: smallest id) are compared, and the one whose stored signature is
       most similar wins if ``same_story`` holds (ties: smallest id);
    3. otherwise the copy starts a story: its signature and band keys are stored.

    Then each exact key of the copy that no other live story holds is recorded under the story,
    so the next identical copy is an exact hit, and the story counts as seen now. A story keeps
    the signature and bands of its first copy only. Whatever was not seen for ``retention``
    seconds is forgotten.
    """

    def __init__(self, retention: float = RETENTION_SECONDS):
        self.retention = retention
        # Ordered by last seen, oldest first, so forgetting stops at the first live entry.
        self._exact: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (story, seen)
        self._stories: OrderedDict[str, _Story] = OrderedDict()
        # band key -> story ids; a tuple, as most bands hold one story (a set costs 4x more)
        self._bands: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._stories)

    def claim(self, keys: StoryKeys, new_story_id: str, now: float) -> tuple[str, bool]:
        """See StoryIndex.claim and the class docstring."""
        self._forget(now)
        story_id = self._find_exact(keys, now) or self._find_similar(keys, now)
        if story_id is None:
            self._add_story(new_story_id, keys, now)
        else:
            self._touch_story(story_id, now)
        claimed = story_id or new_story_id
        self._record_exact(keys, claimed, now)
        return claimed, story_id is None

    def _live(self, seen: float, now: float) -> bool:
        return now - seen < self.retention

    def _find_exact(self, keys: StoryKeys, now: float) -> str | None:
        for key in exact_keys(keys):
            owner = self._exact.get(key)
            if owner and self._live(owner[1], now):
                return owner[0]
        return None

    def _find_similar(self, keys: StoryKeys, now: float) -> str | None:
        shared = Counter(chain.from_iterable(self._bands.get(band, ()) for band in keys.bands))
        shortlist = heapq.nsmallest(MAX_CANDIDATES, shared, key=lambda c: (-shared[c], c))
        # _forget has dropped the stories that expired before now, unless the clock went back.
        candidates = [c for c in shortlist if self._live(self._stories[c].seen, now)]
        if not candidates:
            return None
        # max() keeps the first of equals, so a tie goes to the smallest story id.
        best = max(sorted(candidates),
                   key=lambda c: similarity(keys.signature, self._stories[c].signature))
        return best if same_story(keys.signature, self._stories[best].signature) else None

    def _add_story(self, story_id: str, keys: StoryKeys, now: float) -> None:
        self._stories[story_id] = _Story(array("I", keys.signature), keys.bands, now)
        for band in keys.bands:
            self._bands[band] = (*self._bands.get(band, ()), story_id)

    def _touch_story(self, story_id: str, now: float) -> None:
        story = self._stories.get(story_id)
        if story is not None:
            story.seen = now
            self._stories.move_to_end(story_id)

    def _record_exact(self, keys: StoryKeys, story_id: str, now: float) -> None:
        for key in exact_keys(keys):
            owner = self._exact.get(key)
            if owner is None or owner[0] == story_id or not self._live(owner[1], now):
                self._exact[key] = (story_id, now)
                self._exact.move_to_end(key)

    def _forget(self, now: float) -> None:
        while self._exact:
            key, (_, seen) = next(iter(self._exact.items()))
            if self._live(seen, now):
                break
            del self._exact[key]
        while self._stories:
            story_id, story = next(iter(self._stories.items()))
            if self._live(story.seen, now):
                break
            del self._stories[story_id]
            for band in story.bands:
                rest = tuple(other for other in self._bands.pop(band) if other != story_id)
                if rest:
                    self._bands[band] = rest
