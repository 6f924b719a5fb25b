"""Match stage: which watchlists an article fires, found with one Aho-Corasick automaton.

Pure: no Redis, Celery or network. ``compile_watchlists`` once per configuration, then
``match_article`` for every new article. A watchlist is a list of entities (``match: any|all``)
or a query (worker/query.py decides it): the terms of both kinds share the automaton, and a
query is evaluated only for watchlists with a term found, plus those whose query can hold
without one (``NOT x``, ``source:reuters``).

Terms and texts are normalized the same way before matching: typographic apostrophes, quotes
and dashes become their ASCII forms, every run of whitespace becomes one space, and everything
is casefolded. The automaton (ahocorasick-rs) searches the casefolded text; a case-sensitive
term (an acronym such as "US", or any term of an entity with ``case_sensitive: true``) is then
confirmed against the unfolded text. Offsets are mapped back through each rewrite, so every
``Match`` indexes the original title or body. See docs/matching.md.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import ahocorasick_rs

from worker.config import EntityConfig, FeedConfig, WatchlistConfig
from worker.language import detect_language
from worker.models import Article, Match, WatchlistHit
from worker.query import Node, Term, evaluate, needs_hit, parse_query, terms

SNIPPET_MAX = 240
_ELLIPSIS = "…"

_TYPOGRAPHIC = (
    [(c, "'") for c in "\u2019\u2018\u201b\u02bc\u2032`"]
    + [(c, '"') for c in "\u201c\u201d\u201e\u201f\u00ab\u00bb"]
    + [(c, "-") for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"]
    # Every character str.isspace() accepts, so "\s" runs become one space.
    + [(c, " ") for c in "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002"
                         "\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029"
                         "\u202f\u205f\u3000"]
)
_TYPOGRAPHIC_ASCII = [(variant, plain) for variant, plain in _TYPOGRAPHIC if variant.isascii()]
_SPACE_RUN = re.compile("  +")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A sentence ends at . ! ? followed by whitespace, at 。！？, or at a line break. (One character
# class: the re module scans for it several times faster than for an alternation.)
_SENTENCE_END = re.compile("[.!?\u3002\uff01\uff1f\n\r\u2028\u2029]")
_TITLES = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "gen", "gov", "sen",
                     "rep", "lt", "col", "capt", "sgt", "rev", "hon", "vs"})
_CLOSING = ".!?\"')]\u201d\u2019\u00bb"

# Scripts written without spaces between words (Han, kana, Thai, Lao, Tibetan, Myanmar,
# Khmer, Tai scripts, Yi, Balinese, Javanese): a term in them matches anywhere.
_NO_SPACE_RANGES = (
    (0x0E00, 0x0FFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x1950, 0x19FF),
    (0x1A20, 0x1AAF), (0x1B00, 0x1B7F), (0x2E80, 0x2FDF), (0x3005, 0x3007),
    (0x3021, 0x3029), (0x3031, 0x3035), (0x3038, 0x303C), (0x3040, 0x312F),
    (0x31A0, 0x31BF), (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
    (0xA000, 0xA4CF), (0xA980, 0xA9FF), (0xAA60, 0xAADF), (0xF900, 0xFAFF),
    (0xFF66, 0xFF9F), (0x16FE0, 0x16FFF), (0x1B000, 0x1B16F), (0x20000, 0x3FFFF),
)
_NO_SPACE_BOUNDS = [edge for lo, hi in _NO_SPACE_RANGES for edge in (lo, hi + 1)]
_NO_SPACE_CLASS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _NO_SPACE_RANGES)
# A word, for NEAR's count: a run of non-space characters holding a letter or digit, or one
# character of a spaceless script (there every character counts as a word).
_WORD = re.compile(rf"[{_NO_SPACE_CLASS}]|[^\s{_NO_SPACE_CLASS}]*[^\W_][^\s{_NO_SPACE_CLASS}]*")
_WORD_BREAK = re.compile(rf"[\s{_NO_SPACE_CLASS}]")


def _in_spaceless_script(char: str) -> bool:
    return bisect_right(_NO_SPACE_BOUNDS, ord(char)) % 2 == 1


@cache
def _continues_word(char: str) -> bool:
    """Whether a term next to ``char`` would be part of a longer word.

    Combining marks count as word characters (they are not ``isalnum`` but carry Devanagari
    vowels and decomposed accents). Characters of spaceless scripts never do, so a Latin
    name written between kana ("東京でAppleが") still matches.
    """
    if not (char.isalnum() or unicodedata.category(char).startswith("M")):
        return False
    return not _in_spaceless_script(char)


@dataclass(frozen=True)
class _OffsetLayer:
    """A piecewise-linear map from positions in a rewritten text back to the text before it."""

    starts: tuple[int, ...]
    origins: tuple[int, ...]

    def original(self, pos: int) -> int:
        k = bisect_right(self.starts, pos) - 1
        return self.origins[k] + pos - self.starts[k]


@dataclass(frozen=True)
class _Normalized:
    """A normalized text and the layers that map its positions back to the original."""

    text: str
    layers: tuple[_OffsetLayer, ...] = ()    # applied in order: newest rewrite first

    def original_span(self, start: int, stop: int) -> tuple[int, int]:
        first, last = start, stop - 1
        for layer in self.layers:
            first, last = layer.original(first), layer.original(last)
        return first, last + 1


def _map_typographic(text: str) -> str:
    """Typographic punctuation to ASCII and every whitespace character to a space."""
    # A chain of str.replace is ~10x faster than str.translate on non-ASCII text.
    for variant, plain in _TYPOGRAPHIC_ASCII if text.isascii() else _TYPOGRAPHIC:
        if variant in text:
            text = text.replace(variant, plain)
    return text


def _collapse(text: str) -> _Normalized:
    """Map typographic characters (length-preserving), then collapse runs of spaces to one."""
    mapped = _map_typographic(text)
    if "  " not in mapped:
        return _Normalized(mapped)
    runs = [m.span() for m in _SPACE_RUN.finditer(mapped)]
    pieces, starts, origins = [], [0], [0]
    previous = removed = 0
    for start, stop in runs:
        pieces.append(mapped[previous:start + 1])
        removed += stop - start - 1
        starts.append(stop - removed)
        origins.append(stop)
        previous = stop
    pieces.append(mapped[previous:])
    return _Normalized("".join(pieces), (_OffsetLayer(tuple(starts), tuple(origins)),))


def _casefold(text: str) -> tuple[str, _OffsetLayer | None]:
    """Casefold a collapsed text; casefold can lengthen it ("ß" to "ss"), so map it back."""
    folded = text.casefold()
    if len(folded) == len(text):    # every character folded to exactly one
        return folded, None
    starts, origins = [0], [0]
    shift = 0
    for run in _NON_ASCII_RUN.finditer(text):    # ASCII never changes length
        for i in range(run.start(), run.end()):
            width = len(text[i].casefold())
            if width == 1:
                continue
            at = i + shift
            for offset in range(width):
                starts.append(at + offset)
                origins.append(i)
            starts.append(at + width)
            origins.append(i + 1)
            shift += width - 1
    # Folding can yield characters the typographic map rewrites ("ŉ" becomes "ʼn").
    return _map_typographic(folded), _OffsetLayer(tuple(starts), tuple(origins))


@dataclass(frozen=True)
class _Haystack:
    """One field in both its forms: ``folded`` is searched and ``exact`` confirms
    case-sensitive terms."""

    exact: str                      # typographic characters mapped, whitespace collapsed
    folded: _Normalized             # ``exact`` casefolded, mapped back to the original
    fold: _OffsetLayer | None       # positions in ``folded.text`` to positions in ``exact``

    def has_exact(self, start: int, stop: int, term: str) -> bool:
        if self.fold is not None:
            start, stop = self.fold.original(start), self.fold.original(stop - 1) + 1
        return self.exact[start:stop] == term


def _haystack(text: str) -> _Haystack:
    collapsed = _collapse(text)
    folded, fold = _casefold(collapsed.text)
    layers = collapsed.layers if fold is None else (fold, *collapsed.layers)
    return _Haystack(collapsed.text, _Normalized(folded, layers), fold)


def is_acronym(term: str) -> bool:
    """Written wholly in capitals with two or more letters (LNG, EU, U.S.)."""
    if not term.isupper():    # fast path: some cased letter is not a capital, or none is cased
        return False
    letters = [c for c in term if c.isalpha()]
    return len(letters) >= 2 and all(c.isupper() for c in letters)


def _is_case_sensitive(term: str, entity: EntityConfig | None) -> bool:
    if entity is not None and entity.case_sensitive is not None:
        return entity.case_sensitive
    return is_acronym(term)


class _Target(NamedTuple):
    """What a term stands for: an entity of a watchlist (for a query watchlist, a term of its
    query: a slot), or (``entity`` -1) an exclusion."""

    watchlist: int
    entity: int                     # index into _Watchlist.entities
    term: str                       # as configured
    exact: str | None               # the normalized term when case-sensitive, else None


class _Occurrence(NamedTuple):
    target: _Target
    field: str
    text: str                       # the original title or body
    normalized: _Normalized
    start: int                      # offsets into normalized.text
    stop: int


@dataclass(frozen=True)
class _Watchlist:
    """What matching needs of a watchlist; entities are referred to by index."""

    name: str
    entities: tuple[str, ...]       # reported names: entities, or (query) each slot's entity
    require_all: bool
    query: Node | None = None
    slots: tuple[Term, ...] = ()    # query watchlists: the query term of each slot


class _Key(NamedTuple):
    """What a pattern of the automaton (a normalized, casefolded term) stands for."""

    free_start: bool                # begins in a spaceless script: may follow a letter
    free_end: bool                  # ends in one: may precede a letter
    targets: tuple[_Target, ...]


@dataclass(frozen=True)
class _Automaton:
    """The automaton and, by pattern index, what each pattern stands for."""

    search: ahocorasick_rs.AhoCorasick
    keys: tuple[_Key, ...]

    def find(self, text: str) -> list[tuple[int, int, int]]:
        """(pattern index, start, stop) of every occurrence, overlapping ones too."""
        try:
            return self.search.find_matches_as_indexes(text, overlapping=True)
        except UnicodeEncodeError:
            # A lone surrogate (a JSON feed can escape one) has no UTF-8 form for the Rust side;
            # U+FFFD keeps the length, so offsets stay right.
            return self.search.find_matches_as_indexes(_SURROGATE.sub("\ufffd", text),
                                                       overlapping=True)


class _AutomatonBuilder:
    """Collects every term keyed by its casefolded normal form, then builds one automaton.

    Case-sensitive terms share the casefolded key and are confirmed against the unfolded text
    when found, so one pass over the text serves both case modes.
    """

    def __init__(self) -> None:
        self.targets: dict[str, list[_Target]] = {}
        self.count = 0                  # terms added, alike or not

    def add(self, watchlist: int, entity: int, term: str, case_sensitive: bool) -> None:
        self.count += 1
        exact = _collapse(term.strip()).text
        key = _casefold(exact)[0]
        if not key:
            return
        target = _Target(watchlist, entity, term, exact if case_sensitive else None)
        self.targets.setdefault(key, []).append(target)

    def build(self) -> _Automaton | None:
        if not self.targets:
            return None
        keys = tuple(_Key(_in_spaceless_script(key[0]), _in_spaceless_script(key[-1]),
                          tuple(targets)) for key, targets in self.targets.items())
        # Overlapping search needs the standard match kind (the default); ahocorasick-rs picks
        # the automaton: a DFA for a few terms, a contiguous NFA for many.
        # (The configuration rejects lone surrogates, so every term has a UTF-8 form.)
        return _Automaton(ahocorasick_rs.AhoCorasick(list(self.targets)), keys)


class Matcher:
    """Every term of every watchlist in one automaton; build it with compile_watchlists."""

    def __init__(self, watchlists: Sequence[_Watchlist], automaton: _Automaton | None,
                 term_count: int, feeds: Mapping[str, tuple[str, str | None]] | None = None):
        self._watchlists = tuple(watchlists)
        self._automaton = automaton
        self._term_count = term_count
        self._feeds = dict(feeds or {})     # feed URL: (feed name, configured language)
        # Queries that can hold with none of their terms found are decided on every article.
        self._always = frozenset(i for i, w in enumerate(self._watchlists)
                                 if w.query is not None and not needs_hit(w.query))

    @property
    def term_count(self) -> int:
        """How many terms the automaton was given: entity names, aliases, query terms (an
        entity's name standing for its aliases counts each) and exclusions."""
        return self._term_count

    def match(self, title: str, body: str, *, source: str = "", feed: str = "",
              language: str | None = None) -> list[WatchlistHit]:
        """Every watchlist the title and body fire, in configuration order.

        ``source`` and ``feed`` (its configured name) answer ``source:`` and ``feed:``;
        ``language``, if given, answers ``lang:``, else it is detected when a query asks.
        """
        found: dict[int, list[_Occurrence]] = {}
        excluded: set[int] = set()
        haystacks: dict[str, _Haystack] = {}
        for field, text in (("title", title), ("body", body)) if self._automaton else ():
            haystack = haystacks[field] = _haystack(text)
            for target, start, stop in _whole_words(self._automaton, haystack):
                if target.entity < 0:
                    excluded.add(target.watchlist)
                else:
                    found.setdefault(target.watchlist, []).append(
                        _Occurrence(target, field, text, haystack.folded, start, stop))
        facts = _Facts(title, body, haystacks, source, feed, language)
        hits = []
        for index in sorted((found.keys() | self._always) if self._always else found):
            if index in excluded:
                continue
            watchlist = self._watchlists[index]
            if watchlist.query is None:
                hit = _hit(watchlist, found[index], facts.snippets)
            else:
                hit = _query_hit(watchlist, found.get(index, []), facts)
            if hit is not None:
                hits.append(hit)
        return hits

    def match_article(self, article: Article) -> list[WatchlistHit]:
        """``match`` with the article's source, and its feed's name and configured language."""
        feed, language = self._feeds.get(article.feed, ("", None))
        return self.match(article.title, article.body, source=article.source, feed=feed,
                          language=language)


class _Facts:
    """The article as a query's ``source:``, ``feed:``, ``lang:`` and NEAR see it; the
    language and the word positions are worked out only when a query asks."""

    def __init__(self, title: str, body: str, haystacks: Mapping[str, _Haystack], source: str,
                 feed: str, language: str | None):
        self.source, self.feed = source, feed
        self._title, self._body, self._haystacks = title, body, haystacks
        self._language = language
        self.snippets: dict[tuple[str, int, int], str] = {}    # shared by the hits

    @property
    def language(self) -> str:
        if self._language is None:
            self._language = detect_language(self._title, self._body)
        return self._language

    def words_between(self, field: str, stop: int, start: int, most: int) -> int:
        text = self._haystacks[field].folded.text
        if stop < start and not _WORD_BREAK.match(text[stop]):
            # The term ended inside a longer run ("Japan" of "Japan's"): the rest of the run
            # is not a word between.
            end = _WORD_BREAK.search(text, stop, start)
            stop = end.start() if end else start
        count = 0
        for _ in _WORD.finditer(text, stop, start):    # counts no further than needed
            count += 1
            if count > most:
                break
        return count


def _whole_words(automaton: _Automaton, haystack: _Haystack) -> Iterator[tuple[_Target, int, int]]:
    """Whole-word occurrences in ``haystack.folded``, once for each target they stand for."""
    text = haystack.folded.text
    size = len(text)
    # Overlapping occurrences, so that "korea" inside "Korean Air" does not hide the term
    # "Korean Air"; the rules below keep the whole words.
    for index, start, stop in automaton.find(text):
        free_start, free_end, targets = automaton.keys[index]
        if not free_start and start > 0 and _continues_word(text[start - 1]):
            continue
        if not free_end and stop < size and _continues_word(text[stop]):
            continue
        for target in targets:
            if target.exact is None or haystack.has_exact(start, stop, target.exact):
                yield target, start, stop


def _hit(watchlist: _Watchlist, occurrences: list[_Occurrence],
         snippets: dict[tuple[str, int, int], str]) -> WatchlistHit | None:
    matched = {o.target.entity for o in occurrences}
    if watchlist.require_all and len(matched) < len(watchlist.entities):
        return None
    return _report(watchlist, occurrences, snippets)


def _query_hit(watchlist: _Watchlist, occurrences: list[_Occurrence],
               facts: _Facts) -> WatchlistHit | None:
    assert watchlist.query is not None
    by_term: dict[Term, list[_Occurrence]] = {}
    for o in occurrences:
        by_term.setdefault(watchlist.slots[o.target.entity], []).append(o)
    holds, witnesses = evaluate(watchlist.query, by_term, facts)
    if not holds:
        return None
    return _report(watchlist, witnesses, facts.snippets)  # type: ignore[arg-type]


def _report(watchlist: _Watchlist, occurrences: Sequence[_Occurrence],
            snippets: dict[tuple[str, int, int], str]) -> WatchlistHit:
    """The hit: every occurrence once per entity and position, title first, then by offset.
    ``snippets`` keeps the sentences already cut for this article (10 µs each)."""
    matches: dict[tuple[str, str, int, int], tuple[int, Match]] = {}
    for o in occurrences:
        start, end = o.normalized.original_span(o.start, o.stop)
        slot = o.target.entity
        name = watchlist.entities[slot]
        key = (name, o.field, start, end)
        # Terms of one entity that normalize alike ("US" and "us") find the same text once.
        if key in matches:
            continue
        place = (o.field, start, end)
        if place not in snippets:
            snippets[place] = sentence_snippet(o.text, start, end)
        matches[key] = (slot, Match(entity=name, term=o.target.term, field=o.field,
                                    start=start, end=end, snippet=snippets[place]))
    ordered = sorted(matches.values(),
                     key=lambda em: (em[1].field != "title", em[1].start, em[1].end, em[0]))
    slots = sorted({slot for slot, _ in matches.values()})
    return WatchlistHit(
        watchlist=watchlist.name,
        entities=tuple(dict.fromkeys(watchlist.entities[i] for i in slots)),
        matches=tuple(m for _, m in ordered),
    )


def compile_watchlists(watchlists: Sequence[WatchlistConfig],
                       feeds: Sequence[FeedConfig] = ()) -> Matcher:
    """Build one matcher for every term of every watchlist (about 1 s for 100,000 terms).

    ``feeds`` tell ``match_article`` each feed's name and configured language.
    """
    builder = _AutomatonBuilder()
    compiled = []
    for w, watchlist in enumerate(watchlists):
        if watchlist.query is not None:
            compiled.append(_compile_query(builder, w, watchlist))
        else:
            for e, entity in enumerate(watchlist.entities):
                for term in entity.terms:
                    builder.add(w, e, term, _is_case_sensitive(term, entity))
            compiled.append(_Watchlist(
                name=watchlist.name,
                entities=tuple(entity.name for entity in watchlist.entities),
                require_all=watchlist.match == "all",
            ))
        for term in watchlist.exclude:
            builder.add(w, -1, term, _is_case_sensitive(term, None))
    return Matcher(compiled, builder.build(), builder.count,
                   {f.url: (f.name, f.language) for f in feeds})


def _compile_query(builder: _AutomatonBuilder, w: int, watchlist: WatchlistConfig) -> _Watchlist:
    """A slot per distinct query term; a term equal to an entity's name stands for all of the
    entity's terms (its case rules included), any other is matched as written."""
    assert watchlist.query is not None
    tree = parse_query(watchlist.query)
    by_name = {_fold(entity.name): entity for entity in watchlist.entities}
    slots = tuple(dict.fromkeys(terms(tree)))
    names = []
    for slot, term in enumerate(slots):
        entity = by_name.get(_fold(term.text))
        if entity is None:
            builder.add(w, slot, term.text, is_acronym(term.text))
            names.append(term.text)
            continue
        for alias in entity.terms:
            builder.add(w, slot, alias, _is_case_sensitive(alias, entity))
        names.append(entity.name)
    return _Watchlist(name=watchlist.name, entities=tuple(names), require_all=False,
                      query=tree, slots=slots)


def _fold(term: str) -> str:
    return _casefold(_collapse(term.strip()).text)[0]


def match_article(matcher: Matcher, article: Article) -> list[WatchlistHit]:
    """The watchlists an article fires, matching its title and its paragraphs."""
    return matcher.match_article(article)


def sentence_snippet(text: str, start: int, end: int) -> str:
    """The sentence around ``text[start:end]``, whitespace collapsed, at most 240 characters."""
    low, high = max(0, start - SNIPPET_MAX), min(len(text), end + SNIPPET_MAX)
    begin = finish = None
    for at in reversed([m.start() for m in _SENTENCE_END.finditer(text, low, start)]):
        begin = _after_sentence_end(text, at)
        if begin is not None:
            begin = min(begin, start)
            break
    for candidate in _SENTENCE_END.finditer(text, end, high):
        finish = _after_sentence_end(text, candidate.start())
        if finish is not None:
            break
    cut_before, cut_after = begin is None and low > 0, finish is None and high < len(text)
    before = _squeeze(text[low if begin is None else begin:start]).lstrip()
    middle = _squeeze(text[start:end])
    after = _squeeze(text[end:high if finish is None else finish]).rstrip()
    return _fit(before, middle, after, cut_before, cut_after)


def _squeeze(text: str) -> str:
    """Every whitespace run to one space, keeping a space at either edge."""
    squeezed = " ".join(text.split())    # str.split is several times faster than re.sub
    if squeezed and text[0].isspace():
        squeezed = " " + squeezed
    if text and text[-1].isspace():
        squeezed += " "
    return squeezed


def _after_sentence_end(text: str, at: int) -> int | None:
    """Where the next sentence may start if ``text[at]`` ends one, else None."""
    if text[at] not in ".!?":
        return at + 1
    # "3.5", "U.S.-Japan" and "e.g.," go on; a stop (with closing quotes) before space ends it.
    after = at + 1
    while after < len(text) and text[after] in _CLOSING:
        after += 1
    if after < len(text) and not text[after].isspace():
        return None
    if text[at] == "." and _is_abbreviation(text, at):
        return None
    return after


def _is_abbreviation(text: str, stop: int) -> bool:
    """A stop that ends "U.S.", "Mr." or "p." rather than a sentence, by the words around it."""
    following = text[stop + 1:stop + 40].lstrip(_CLOSING + " \t\u00a0")[:1]
    if following.islower():
        return True
    word = text[max(0, stop - 8):stop].rsplit(None, 1)[-1:] or [""]
    last = word[0].rsplit(".", 1)[-1]
    return len(last) == 1 and last.isalpha() or last.casefold() in _TITLES


def _fit(before: str, middle: str, after: str, cut_before: bool, cut_after: bool) -> str:
    """Join the parts within SNIPPET_MAX, trimming both sides at word breaks around the middle."""
    room = SNIPPET_MAX - len(middle)
    if not cut_before and not cut_after and len(before) + len(after) <= room:
        return before + middle + after
    if room < 2:
        return middle[:SNIPPET_MAX - 1] + _ELLIPSIS
    room -= 2    # an ellipsis on each side at most
    keep_before = min(len(before), max(room // 2, room - len(after)))
    keep_after = min(len(after), room - keep_before)
    cut = len(before) - keep_before
    if cut > 0 and before[cut - 1] != " ":
        space = before.find(" ", cut)
        cut = space + 1 if 0 <= space < len(before) - 1 else cut
    head = before[cut:]
    if cut > 0 or cut_before:
        head = _ELLIPSIS + head.lstrip()
    tail = after[:keep_after]
    if keep_after < len(after) and after[keep_after] != " ":
        space = tail.rfind(" ")
        tail = tail[:space] if space > 0 else tail
    if len(tail) < len(after) or cut_after:
        tail = tail.rstrip() + _ELLIPSIS
    return head + middle + tail
