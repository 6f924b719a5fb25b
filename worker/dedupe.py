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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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
#
# One claim algorithm (``claim_story``) for every index: it reads what the index holds, makes
# the decision with the pure functions below, and asks the index to commit the decision only
# if what it read is still true (compare-and-set); otherwise it reads again. An index is only
# storage (``IndexStorage``): the memory index here, the Redis index in ``store``.

RETENTION_SECONDS = 30 * 24 * 3600
# A copy at the threshold shares ~4 of 32 bands with its story, a look-alike story mostly one:
# comparing only the best-sharing candidates bounds the work when many stories look alike.
MAX_CANDIDATES = 8
# Story ids kept per band value (the newest): a band that many stories share (boilerplate)
# costs a bounded read; a story pushed out of one band is still found through its others.
BAND_CAP = 8
# Band entries are written into epochs of half the retention window, and a claim reads the
# current epoch and the two before it (every entry is readable for at least one window). A
# story whose copies keep arriving is written again into each new epoch; an old epoch's
# entries disappear with it, so stale band entries never pile up.
EPOCHS_READ = 3
BUCKET_DIGITS = 3            # 16**3 buckets per band and epoch (a small hash each)
CLAIM_ATTEMPTS = 20


def epoch_of(now: float, retention: float) -> int:
    return int(now // (retention / 2))


def band_slots(sig: Sequence[int]) -> tuple[tuple[str, str], ...]:
    """Where each band of a signature is indexed: (bucket, field), both short hex strings
    derived from the band's values (nothing about bands is stored with the story)."""
    out = []
    for band, key in enumerate(band_keys(sig)):
        digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
        out.append((f"{band:02x}{digest[:BUCKET_DIGITS]}", digest[BUCKET_DIGITS:]))
    return tuple(out)


@dataclass(frozen=True)
class IndexRead:
    """What a claim reads from an index for one article."""

    claimed: tuple[str, bool] | None   # the article was claimed before: (story, new)
    version: str                       # changes whenever a story is added
    owners: tuple[str, ...]            # the story holding each exact key ("" none), as exact_keys
    members: tuple[str, ...]           # story ids in the article's band slots, every epoch read


@dataclass(frozen=True)
class StoryRecord:
    """A live story as a claim sees it."""

    seen: float
    epoch: int                         # the epoch its band entries were last written in
    signature: tuple[int, ...] = ()


@dataclass(frozen=True)
class ClaimPlan:
    """A decision for the index to commit if ``version`` and ``owners`` still hold."""

    article_id: str
    story_id: str
    is_new: bool
    version: str
    take: tuple[tuple[str, str], ...]  # (exact key, the owner read): recorded under the story
    bands: tuple[tuple[str, str], ...] # band slots to write into the current epoch ((): none)
    signature: tuple[int, ...]         # a new story's signature
    epoch: int


@dataclass(frozen=True)
class Claim:
    story_id: str
    is_new: bool
    fresh: bool                        # False: the article had been claimed before (a retry)


class IndexStorage(Protocol):
    """Storage of a story index; it decides nothing (see ``claim_story``)."""

    retention: float

    def read(self, article_id: str, keys: StoryKeys, epochs: tuple[int, ...],
             now: float) -> IndexRead: ...

    def stories(self, ids: Sequence[str], now: float,
                signatures: bool) -> dict[str, StoryRecord]: ...

    def commit(self, plan: ClaimPlan, now: float) -> Claim | None: ...


def exact_owner(owners: Sequence[str], live: dict[str, StoryRecord]) -> str | None:
    """The first exact key's story that is still alive."""
    return next((owner for owner in owners if owner and owner in live), None)


def shortlist(members: Sequence[str], live: dict[str, StoryRecord]) -> list[str]:
    """The MAX_CANDIDATES live stories sharing the most band slots (ties: smallest id)."""
    shared = Counter(m for m in members if m in live)
    return heapq.nsmallest(MAX_CANDIDATES, shared, key=lambda c: (-shared[c], c))


def most_similar(sig: Sequence[int], candidates: dict[str, StoryRecord]) -> str | None:
    """The candidate most similar to ``sig`` if it is the same story (ties: smallest id)."""
    if not candidates:
        return None
    best = max(sorted(candidates), key=lambda c: similarity(sig, candidates[c].signature))
    return best if same_story(sig, candidates[best].signature) else None


def plan_claim(article_id: str, keys: StoryKeys, new_story_id: str, read: IndexRead,
               story: str | None, record: StoryRecord | None, live: dict[str, StoryRecord],
               epoch: int) -> ClaimPlan:
    """What to record: each exact key no other live story holds goes to the story; a new
    story's bands, or a known story's bands again when they were written in an older epoch."""
    sid = story or new_story_id
    take = tuple((key, owner) for key, owner in zip(exact_keys(keys), read.owners, strict=True)
                 if not owner or owner == sid or owner not in live)
    if story is None:
        bands = band_slots(keys.signature)
    elif record is not None and record.epoch < epoch and record.signature:
        bands = band_slots(record.signature)
    else:
        bands = ()
    return ClaimPlan(article_id, sid, story is None, read.version, take, bands,
                     keys.signature if story is None else (), epoch)


def claim_story(index: IndexStorage, article_id: str, keys: StoryKeys, new_story_id: str,
                now: float) -> Claim:
    """The story of an article: exact keys in the order of ``exact_keys`` (URL, GUID,
    fingerprint), then the most similar of the best-sharing band candidates, else a new
    story. Safe to run twice and concurrently: a repeated claim returns the first answer."""
    epoch = epoch_of(now, index.retention)
    epochs = tuple(range(epoch - EPOCHS_READ + 1, epoch + 1))
    for _ in range(CLAIM_ATTEMPTS):
        read = index.read(article_id, keys, epochs, now)
        if read.claimed:
            return Claim(read.claimed[0], read.claimed[1], fresh=False)
        live = index.stories(list(dict.fromkeys([*read.owners, *read.members])), now, False)
        story = exact_owner(read.owners, live)
        record = None
        if story is None and keys.signature:
            candidates = index.stories(shortlist(read.members, live), now, True)
            story = most_similar(keys.signature, candidates)
            record = candidates.get(story) if story else None
        elif story is not None:
            record = index.stories([story], now, live[story].epoch < epoch).get(story)
        plan = plan_claim(article_id, keys, new_story_id, read, story, record, live, epoch)
        done = index.commit(plan, now)
        if done is not None:
            return done
    raise RuntimeError(f"story claim of {article_id} kept conflicting ({CLAIM_ATTEMPTS} tries)")


class StoryIndex(Protocol):
    """Maps copies of an article to one story id."""

    def claim(self, keys: StoryKeys, new_story_id: str, now: float) -> tuple[str, bool]:
        """(story_id, False) when the keys name a known story, else (new_story_id, True).
        Either way the copy's keys are recorded under the returned story."""
        ...


@dataclass
class _Story:
    signature: array   # as array("I") (a tuple costs 8x the memory)
    seen: float        # when a copy was last claimed
    epoch: int


class MemoryStoryIndex:
    """Story index storage in dicts, for tests and benchmarks: the same ``claim_story`` as
    the Redis index runs over it, with the same entries and lifetimes (an entry is alive for
    ``retention`` seconds after the copy that last refreshed it)."""

    def __init__(self, retention: float = RETENTION_SECONDS):
        self.retention = retention
        self._version = 0
        self._claimed: dict[str, tuple[str, bool, float]] = {}  # article -> (story, new, until)
        self._exact: dict[str, tuple[str, float]] = {}          # key -> (story, until)
        self._stories: dict[str, _Story] = {}
        self._bands: dict[tuple[int, str, str], tuple[str, ...]] = {}  # (epoch, bucket, field)
        self._stamp = 0.0
        self._swept = -1e18
        self._calls = 0

    def __len__(self) -> int:
        return sum(1 for s in self._stories.values() if self._stamp - s.seen < self.retention)

    def claim(self, keys: StoryKeys, new_story_id: str, now: float,
              article_id: str | None = None) -> tuple[str, bool]:
        """See StoryIndex.claim; every call is a new article unless ``article_id`` repeats."""
        self._stamp = now
        self._forget(now)
        self._calls += 1
        claim = claim_story(self, article_id or f"article {self._calls}", keys, new_story_id, now)
        return claim.story_id, claim.is_new

    def read(self, article_id: str, keys: StoryKeys, epochs: tuple[int, ...],
             now: float) -> IndexRead:
        self._stamp = now
        known = self._claimed.get(article_id)
        owners = tuple(self._live_value(self._exact.get(k)) for k in exact_keys(keys))
        slots = band_slots(keys.signature)
        members = tuple(m for e in epochs for bucket, field in slots
                        for m in self._bands.get((e, bucket, field), ()))
        claimed = (known[0], known[1]) if known and known[2] > self._stamp else None
        return IndexRead(claimed, str(self._version), owners, members)

    def _live_value(self, entry: tuple[str, float] | None) -> str:
        return entry[0] if entry and entry[1] > self._stamp else ""

    def stories(self, ids: Sequence[str], now: float,
                signatures: bool) -> dict[str, StoryRecord]:
        out = {}
        for sid in ids:
            story = self._stories.get(sid)
            if story is not None and now - story.seen < self.retention:
                out[sid] = StoryRecord(story.seen, story.epoch,
                                       tuple(story.signature) if signatures else ())
        return out

    def commit(self, plan: ClaimPlan, now: float) -> Claim | None:
        if plan.article_id in self._claimed and self._claimed[plan.article_id][2] > now:
            story, new, _ = self._claimed[plan.article_id]
            return Claim(story, new, fresh=False)
        if plan.is_new and plan.version != str(self._version):
            return None
        until = now + self.retention
        for key, owner in plan.take:
            if self._live_value(self._exact.get(key)) != owner:
                if plan.is_new:
                    return None
                continue
            self._exact[key] = (plan.story_id, until)
        if plan.is_new:
            self._version += 1
            self._stories[plan.story_id] = _Story(array("I", plan.signature), now, plan.epoch)
        else:
            story = self._stories.get(plan.story_id)
            if story is None or now - story.seen >= self.retention:
                return None
            story.seen = now
            if plan.bands:
                story.epoch = plan.epoch
        for bucket, field in plan.bands:
            slot = (plan.epoch, bucket, field)
            kept = tuple(m for m in self._bands.get(slot, ()) if m != plan.story_id)
            self._bands[slot] = (*kept, plan.story_id)[-BAND_CAP:]
        self._claimed[plan.article_id] = (plan.story_id, plan.is_new, until)
        return Claim(plan.story_id, plan.is_new, fresh=True)

    def _forget(self, now: float) -> None:
        """Drop what Redis would have expired by now (bands: epochs no longer read)."""
        epoch = epoch_of(now, self.retention)
        if now - self._swept < self.retention / 8:
            return
        self._swept = now
        self._exact = {k: v for k, v in self._exact.items() if v[1] > now}
        self._claimed = {k: v for k, v in self._claimed.items() if v[2] > now}
        self._stories = {k: v for k, v in self._stories.items() if now - v.seen < self.retention}
        self._bands = {k: v for k, v in self._bands.items() if k[0] > epoch - EPOCHS_READ}
