"""The watchlist query language: ``parse_query`` turns a query into a frozen tree, and
``evaluate`` decides it on the term occurrences the match stage found in an article.

Pure: no I/O. The match stage owns finding terms (one automaton for every watchlist); this
module owns what a query means. The grammar, with precedence NOT, NEAR, AND, OR::

    query   = or , END ;
    or      = and , { "OR" , and } ;
    and     = near , { [ "AND" ] , near } ;             (adjacent operands: implicit AND)
    near    = unary , { ( "NEAR/" n | "ONEAR/" n ) , unary } ;
    unary   = "NOT" , unary | primary ;
    primary = "(" , or , ")" | ( "title:" | "body:" ) , primary
            | "atleast:" n , "(" , or , ")" | ( "source:" | "feed:" | "lang:" ) , value
            | term | phrase ;

See docs/matching.md for what each part matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from functools import lru_cache
from typing import NamedTuple, Protocol

from worker.errors import QuerySyntaxError

FIELDS = ("title", "body")
ATTRIBUTES = ("source", "feed", "lang")
MAX_DEPTH = 50          # nested groups and NOTs: deeper is refused, not a RecursionError


@dataclass(frozen=True)
class Term:
    """A word or a quoted phrase, matched by the usual rules, optionally in one field."""

    text: str                       # as written, without quotes
    field: str | None = None        # "title", "body", or None for either
    column: int = dataclass_field(default=0, compare=False)


@dataclass(frozen=True)
class Attribute:
    """``source:``, ``feed:`` or ``lang:``: a fact about the article, not its words."""

    name: str
    value: str                      # casefolded


@dataclass(frozen=True)
class Not:
    child: Node


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Near:
    """Two positional operands in one field with at most ``distance`` words between them."""

    left: Node
    right: Node
    distance: int
    ordered: bool                   # ONEAR: left before right


@dataclass(frozen=True)
class AtLeast:
    """At least ``count`` distinct occurrences of a positional operand."""

    count: int
    child: Node


Node = Term | Attribute | Not | And | Or | Near | AtLeast


# -- parsing ----------------------------------------------------------------------------------
class _Token(NamedTuple):
    kind: str       # ( ) phrase word and or not near field attr atleast end
    value: str
    column: int     # 1-based
    number: int = 0


_QUOTES = "\"\u201c\u201d\u201e"
_LEXEME = re.compile(rf"\(|\)|[{_QUOTES}][^{_QUOTES}]*[{_QUOTES}]?|[^\s(){_QUOTES}]+")
_NEAR = re.compile(r"(O?)NEAR(?:/([0-9]+))?")
_PREFIX = re.compile(r"([a-z]+):(.*)", re.DOTALL)
_ATLEAST = re.compile(r"atleast:([0-9]+)")
_LANGUAGE = re.compile(r"[a-z]{2,3}")
_OPERATORS = {"AND": "and", "OR": "or", "NOT": "not"}
_STARTS = frozenset({"(", "phrase", "word", "not", "field", "attr", "atleast"})


def _tokens(query: str) -> Iterator[_Token]:
    for lexeme in _LEXEME.finditer(query):
        text, column = lexeme.group(), lexeme.start() + 1
        if text in "()":
            yield _Token(text, text, column)
        elif text[0] in _QUOTES:
            if len(text) == 1 or text[-1] not in _QUOTES:
                raise QuerySyntaxError(column, "expected a closing quote for this phrase")
            yield _Token("phrase", text[1:-1], column)
        else:
            yield from _word_tokens(text, column)
    yield _Token("end", "", len(query) + 1)


def _word_tokens(text: str, column: int) -> Iterator[_Token]:
    """The tokens of a run of non-space characters: prefixes (``title:``) split off first."""
    while (prefix := _PREFIX.fullmatch(text)) and not _ATLEAST.fullmatch(text):
        name, rest = prefix.groups()
        if name in FIELDS:
            yield _Token("field", name, column)
        elif name in ATTRIBUTES:
            yield _Token("attr", name, column)
        elif name == "atleast":
            raise QuerySyntaxError(column, "expected atleast:N( ... ) with N a number, such as "
                                           "atleast:3(Japan)")
        else:
            raise QuerySyntaxError(column, f"expected title:, body:, source:, feed:, lang: or "
                                           f"atleast:N(...), got {name}: (quote a term that "
                                           f"contains a colon)")
        if not rest:
            return
        text, column = rest, column + len(name) + 1
    yield _word_token(text, column)


def _word_token(text: str, column: int) -> _Token:
    if text in _OPERATORS:
        return _Token(_OPERATORS[text], text, column)
    if near := _NEAR.fullmatch(text):
        if near.group(2) is None:
            raise QuerySyntaxError(column, f"expected {text}/n, n the most words between "
                                           f"(such as {text}/5)")
        return _Token("near", text, column, int(near.group(2)))
    if text.startswith(("NEAR/", "ONEAR/")):
        raise QuerySyntaxError(column, f"expected a number of words after {text.split('/')[0]}/")
    if at := _ATLEAST.fullmatch(text):
        return _Token("atleast", text, column, int(at.group(1)))
    return _Token("word", text, column)


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the query"
    if token.kind == "phrase":
        return f'"{token.value}"'
    return token.value if token.kind in ("word", "and", "or", "not", "near") else repr(token.value)


class _Parser:
    def __init__(self, query: str):
        self.tokens = list(_tokens(query))
        self.at = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def query(self) -> Node:
        if self.peek().kind == "end":
            raise QuerySyntaxError(1, "expected a term, a phrase or a group: the query is empty")
        node = self.or_()
        token = self.peek()
        if token.kind != "end":    # only a ")" can stop the loops below early
            raise QuerySyntaxError(token.column, "expected an operator or the end of the query, "
                                                 "got ')' with no '(' before it")
        return node

    def or_(self) -> Node:
        children = [self.and_()]
        while self.peek().kind == "or":
            self.take()
            children.append(self.and_())
        return children[0] if len(children) == 1 else Or(tuple(children))

    def and_(self) -> Node:
        children = [self.near()]
        while True:
            if self.peek().kind == "and":
                self.take()
            elif self.peek().kind not in _STARTS:
                break
            children.append(self.near())
        return children[0] if len(children) == 1 else And(tuple(children))

    def near(self) -> Node:
        left = self.unary()
        chained = 0
        while self.peek().kind == "near":
            operator = self.take()
            chained += 1
            if chained > MAX_DEPTH:     # each NEAR nests the chain one level deeper
                raise QuerySyntaxError(operator.column, f"expected at most {MAX_DEPTH} NEARs "
                                                        "in a row")
            right = self.unary()
            for side in (left, right):
                _require_positional(side, operator, operator.value)
            left = Near(left, right, operator.number, operator.value.startswith("O"))
        return left

    def unary(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise QuerySyntaxError(self.peek().column, f"expected at most {MAX_DEPTH} nested "
                                                       "groups, NOTs and fields")
        try:
            if self.peek().kind == "not":
                self.take()
                return Not(self.unary())
            return self.primary()
        finally:
            self.depth -= 1

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "(":
            node = self.or_()
            self.close(token)
            return node
        if token.kind in ("word", "phrase"):
            if not token.value.strip():
                raise QuerySyntaxError(token.column, "expected a phrase with words in it")
            return Term(token.value, None, token.column)
        if token.kind == "field":
            if self.peek().kind not in ("(", "phrase", "word", "atleast"):
                self.fail(f"a term, a phrase or '(' after {token.value}:")
            return _restrict(self.primary(), token)
        if token.kind == "attr":
            return self.attribute(token)
        if token.kind == "atleast":
            return self.atleast(token)
        self.at -= 1
        self.fail("a term, a phrase or '('")
        raise AssertionError("unreachable")

    def close(self, opening: _Token) -> None:
        if self.peek().kind != ")":
            self.fail(f"')' to close the '(' at column {opening.column}")
        self.take()

    def attribute(self, token: _Token) -> Node:
        value = self.peek()
        if value.kind not in ("word", "phrase") or not value.value.strip():
            self.fail(f"a name after {token.value}:")
        self.take()
        folded = " ".join(value.value.casefold().split())
        if token.value == "lang" and not _LANGUAGE.fullmatch(folded):
            raise QuerySyntaxError(value.column, f"expected a language code such as en or ja "
                                                 f"after lang:, got {value.value!r}")
        return Attribute(token.value, folded)

    def atleast(self, token: _Token) -> Node:
        if token.number < 1:
            raise QuerySyntaxError(token.column, "expected a count of 1 or more after atleast:")
        if self.peek().kind != "(":
            self.fail(f"'(' after {token.value}")
        opening = self.take()
        child = self.or_()
        self.close(opening)
        _require_positional(child, token, token.value)
        return AtLeast(token.number, child)

    def fail(self, expected: str) -> None:
        token = self.peek()
        raise QuerySyntaxError(token.column, f"expected {expected}, got {_describe(token)}")


def _require_positional(node: Node, operator: _Token, name: str) -> None:
    """NEAR and atleast count words, so their operands must be made of terms."""
    if not _is_positional(node):
        raise QuerySyntaxError(operator.column, f"{name} takes terms, phrases, OR of them or "
                                                f"NEAR on each side, not {_kind(node)}")


def _is_positional(node: Node) -> bool:
    if isinstance(node, Term | Near):
        return True
    return isinstance(node, Or) and all(_is_positional(c) for c in node.children)


def _kind(node: Node) -> str:
    if isinstance(node, Attribute):
        return f"{node.name}:"
    if isinstance(node, AtLeast):
        return "atleast:"
    return {Not: "NOT", And: "AND", Or: "an OR with such parts"}.get(type(node), "that")


def _restrict(node: Node, prefix: _Token) -> Node:
    """Push ``title:`` or ``body:`` down to every term of a group."""
    if isinstance(node, Term):
        if node.field not in (None, prefix.value):
            raise QuerySyntaxError(prefix.column, f"{prefix.value}: over a term already "
                                                  f"restricted to {node.field}:")
        return replace(node, field=prefix.value)
    if isinstance(node, Attribute):
        raise QuerySyntaxError(prefix.column, f"{prefix.value}: cannot restrict {node.name}:, "
                                              f"which is not about the article's words")
    if isinstance(node, Not | AtLeast):
        return replace(node, child=_restrict(node.child, prefix))
    if isinstance(node, Near):
        return replace(node, left=_restrict(node.left, prefix), right=_restrict(node.right, prefix))
    return replace(node, children=tuple(_restrict(c, prefix) for c in node.children))


@lru_cache(maxsize=65536)
def parse_query(query: str) -> Node:
    """The tree of a query; raises QuerySyntaxError with the column and what was expected."""
    return _Parser(query).query()


# -- evaluation -------------------------------------------------------------------------------
def terms(node: Node) -> Iterator[Term]:
    """Every term of the query, in the order written (repeats included)."""
    if isinstance(node, Term):
        yield node
    elif isinstance(node, Not | AtLeast):
        yield from terms(node.child)
    elif isinstance(node, Near):
        yield from terms(node.left)
        yield from terms(node.right)
    elif isinstance(node, And | Or):
        for child in node.children:
            yield from terms(child)


def needs_hit(node: Node) -> bool:
    """True if the query is false whenever none of its terms occurs. Only queries for which
    this is False (``NOT x``, ``source:reuters``, ``a OR lang:ja``) are evaluated on articles
    where no term of theirs was found."""
    if isinstance(node, Term | Near | AtLeast):
        return True
    if isinstance(node, And):
        return any(needs_hit(c) for c in node.children)
    if isinstance(node, Or):
        return all(needs_hit(c) for c in node.children)
    return False                    # Not, Attribute


class Occurrence(Protocol):
    """What evaluation needs of a term found in the article."""

    @property
    def field(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def stop(self) -> int: ...


class Facts(Protocol):
    """What evaluation needs of the article besides its term occurrences."""

    source: str
    feed: str

    @property
    def language(self) -> str: ...

    def words_between(self, field: str, stop: int, start: int, most: int) -> int:
        """How many words lie between ``stop`` and ``start`` in the field; it may stop
        counting past ``most``."""
        ...


class _Span(NamedTuple):
    field: str
    start: int
    stop: int
    occurrences: tuple[Occurrence, ...]


Found = Mapping[Term, Sequence[Occurrence]]


def evaluate(node: Node, found: Found, facts: Facts) -> tuple[bool, list[Occurrence]]:
    """Whether the query holds, and the occurrences that make it hold (none under NOT).

    ``found`` gives, for each term of the query (as the tree holds it), its occurrences in
    either field; a field restriction is applied here.
    """
    if isinstance(node, Term):
        occurrences = _in_field(node, found)
        return bool(occurrences), occurrences
    if isinstance(node, Attribute):
        return _attribute(node, facts), []
    if isinstance(node, Not):
        return not evaluate(node.child, found, facts)[0], []
    if isinstance(node, And):
        witnesses: list[Occurrence] = []
        for child in node.children:
            holds, more = evaluate(child, found, facts)
            if not holds:
                return False, []
            witnesses += more
        return True, witnesses
    if isinstance(node, Or):
        results = [evaluate(child, found, facts) for child in node.children]   # every true part
        return any(h for h, _ in results), [o for h, more in results if h for o in more]
    if isinstance(node, Near):
        spans = _spans(node, found, facts)
        return bool(spans), [o for s in spans for o in s.occurrences]
    assert isinstance(node, AtLeast)
    distinct = {(s.field, s.start, s.stop): s for s in _spans(node.child, found, facts)}
    if len(distinct) < node.count:
        return False, []
    return True, [o for s in distinct.values() for o in s.occurrences]


def _in_field(term: Term, found: Found) -> list[Occurrence]:
    occurrences = found.get(term, ())
    if term.field is None:
        return list(occurrences)
    return [o for o in occurrences if o.field == term.field]


def _spans(node: Node, found: Found, facts: Facts) -> list[_Span]:
    """Where a positional operand occurs: a term's occurrences, or the stretch of a NEAR pair."""
    if isinstance(node, Term):
        return [_Span(o.field, o.start, o.stop, (o,)) for o in _in_field(node, found)]
    if isinstance(node, Or):
        return [s for child in node.children for s in _spans(child, found, facts)]
    assert isinstance(node, Near)
    right = _spans(node.right, found, facts)
    if not right:
        return []
    out = []
    for a in _spans(node.left, found, facts):
        for b in right:
            if a.field != b.field:
                continue
            # Overlapping occurrences are one place in the text, not two near each other.
            if a.stop <= b.start:
                gap = facts.words_between(a.field, a.stop, b.start, node.distance)
            elif not node.ordered and b.stop <= a.start:
                gap = facts.words_between(a.field, b.stop, a.start, node.distance)
            else:
                continue
            if gap <= node.distance:
                out.append(_Span(a.field, min(a.start, b.start), max(a.stop, b.stop),
                                 a.occurrences + b.occurrences))
    return out


def _attribute(node: Attribute, facts: Facts) -> bool:
    if node.name == "lang":
        return facts.language == node.value
    if node.name == "feed":
        return facts.feed.casefold() == node.value
    return _has_words(facts.source.casefold(), node.value)


def _has_words(text: str, words: str) -> bool:
    """``words`` in ``text`` with no letter or digit right before or after it."""
    at = text.find(words)
    while at >= 0:
        end = at + len(words)
        if (at == 0 or not text[at - 1].isalnum()) and (end == len(text) or not text[end].isalnum()):
            return True
        at = text.find(words, at + 1)
    return False


def attribute_names(node: Node) -> set[str]:
    """The attributes (``source``, ``feed``, ``lang``) a query tests."""
    if isinstance(node, Attribute):
        return {node.name}
    if isinstance(node, Not | AtLeast):
        return attribute_names(node.child)
    if isinstance(node, And | Or):
        return set().union(*(attribute_names(c) for c in node.children))
    return set()                    # Term, Near: words only
