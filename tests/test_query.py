"""The watchlist query language: golden cases (query, article, fires or not, matched terms),
the grammar's precedence, syntax errors with their column, and how configuration reports them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.feeds import LNG_STORY, RICE_STORY, item, rss
from worker.cli import main
from worker.config import ConfigWatcher, FeedConfig, WatchlistConfig, load_config
from worker.errors import ConfigError, QuerySyntaxError
from worker.match import compile_watchlists, match_article
from worker.models import Article
from worker.query import And, AtLeast, Attribute, Near, Not, Or, Term, needs_hit, parse_query
from worker.service import Service
from worker.settings import Settings

ENTITIES = [{"name": "LNG", "aliases": ["liquefied natural gas"]},
            {"name": "BoJ", "aliases": ["Bank of Japan"]}]


def fired(query: str, title: str = "", body: str = "", **facts: Any) -> list[str] | None:
    """``field:text`` of every match when the query fires, None when it does not."""
    watchlist = WatchlistConfig(name="desk", entities=ENTITIES, query=query)
    hits = compile_watchlists([watchlist]).match(title, body, **facts)
    if not hits:
        return None
    texts = {"title": title, "body": body}
    return [f"{m.field}:{texts[m.field][m.start:m.end]}" for m in hits[0].matches]


GOLDEN = [
    # query, title, body, matched terms (None: does not fire)
    ("Japan", "", "Japan buys gas", ["body:Japan"]),
    ("Japan", "", "Japanese buyers", None),
    ("Japan LNG", "", "Japan buys LNG", ["body:Japan", "body:LNG"]),            # implicit AND
    ("Japan LNG", "", "Japan buys gas", None),
    ("Japan AND LNG", "LNG", "Japan", ["title:LNG", "body:Japan"]),
    # precedence: AND before OR
    ("Japan OR Korea LNG", "", "Japan buys gas", ["body:Japan"]),
    ("Japan OR Korea LNG", "", "Korea buys gas", None),
    ("(Japan OR Korea) LNG", "", "Japan buys gas", None),
    # NOT binds its operand only
    ("NOT Korea Japan", "", "Japan buys gas", ["body:Japan"]),
    ("NOT Korea Japan", "", "Korea buys gas", None),
    ("NOT (Korea Japan)", "", "Korea buys gas", []),
    # NEAR before AND and OR
    ("Japan OR Korea NEAR/2 LNG", "", "Japan buys gas", ["body:Japan"]),
    ("(Japan OR Korea) NEAR/2 LNG", "", "Japan buys gas", None),
    ("Japan AND Korea NEAR/1 LNG", "", "Korea buys LNG, Japan said",
     ["body:Korea", "body:LNG", "body:Japan"]),
    ("Japan AND Korea NEAR/1 LNG", "", "Japan and Korea, and later, much later, LNG", None),
    ("Japan OR Korea AND NOT LNG", "", "Japan buys LNG", ["body:Japan"]),
    # nested parentheses
    ("((Japan OR Korea) AND (LNG OR (coal AND NOT oil)))", "", "Korea burns coal",
     ["body:Korea", "body:coal"]),
    ("((Japan OR Korea) AND (LNG OR (coal AND NOT oil)))", "", "Korea burns coal and oil", None),
    ("((Japan OR Korea) AND (LNG OR (coal AND NOT oil)))", "", "Japan buys LNG",
     ["body:Japan", "body:LNG"]),
    # NEAR: at most n words between, either order; ONEAR: in order
    ("Japan NEAR/0 LNG", "", "Japan LNG imports", ["body:Japan", "body:LNG"]),
    ("Japan NEAR/0 LNG", "", "Japan's LNG imports", ["body:Japan", "body:LNG"]),
    ("Japan NEAR/0 LNG", "", "Japan buys LNG", None),
    ("LNG NEAR/1 Japan", "", "Japan buys LNG", ["body:Japan", "body:LNG"]),
    ("LNG ONEAR/1 Japan", "", "Japan buys LNG", None),
    ("Japan ONEAR/1 LNG", "", "Japan buys LNG", ["body:Japan", "body:LNG"]),
    ("Japan NEAR/2 LNG", "Japan", "LNG", None),                     # title and body never meet
    ("Japan NEAR/2 LNG NEAR/2 Qatar", "", "Japan buys LNG from Qatar",
     ["body:Japan", "body:LNG", "body:Qatar"]),
    ('Japan NEAR/3 "Bank of Japan"', "", "the Bank of Japan said", None),    # overlap: one place
    # NEAR across a paragraph break: the break is not a word
    ("Japan NEAR/2 LNG", "", "Utilities in Japan\nbought more LNG", ["body:Japan", "body:LNG"]),
    ("Japan NEAR/1 LNG", "", "Utilities in Japan\nbought more LNG", None),
    ("Japan NEAR/2 LNG", "", "Utilities in Japan\n\n — \nbought more LNG",
     ["body:Japan", "body:LNG"]),
    # acronyms and aliases inside NEAR
    ("US NEAR/2 Japan", "", "us and Japan", None),
    ("US NEAR/2 Japan", "", "the US and Japan", ["body:US", "body:Japan"]),
    ("Japan NEAR/1 LNG", "", "Japan buys liquefied natural gas",
     ["body:Japan", "body:liquefied natural gas"]),
    ("LNG NEAR/1 Qatar", "", "liquefied natural gas from Qatar",
     ["body:liquefied natural gas", "body:Qatar"]),
    ("LNG NEAR/1 Qatar", "", "lng from Qatar", None),                # the entity's acronym rule
    ("boj ONEAR/2 rates", "", "The Bank of Japan kept rates", ["body:Bank of Japan", "body:rates"]),
    # fields, and NOT over a field
    ('Japan AND NOT title:"Japan Airlines"', "Japan Airlines cuts flights", "Japan", None),
    ('Japan AND NOT title:"Japan Airlines"', "Flights cut", "Japan Airlines flies to Japan",
     ["body:Japan", "body:Japan"]),
    ("title:(Japan OR Korea) LNG", "Korea", "LNG", ["title:Korea", "body:LNG"]),
    ("title:(Japan OR Korea) LNG", "LNG", "Korea", None),
    ("body:Japan", "Japan", "", None),
    ("NOT body:(Japan OR Korea)", "Japan", "Tokyo", []),
    ("title:Japan NEAR/1 LNG", "Japan buys LNG", "Japan buys LNG", ["title:Japan", "title:LNG"]),
    # atleast
    ("atleast:3(Japan)", "", "Japan, Japan and Japan", ["body:Japan"] * 3),
    ("atleast:3(Japan)", "", "Japan and Japan", None),
    ("atleast:3(Japan)", "Japan", "Japan and Japan", ["title:Japan", "body:Japan", "body:Japan"]),
    ("atleast:2(Japan OR Korea)", "", "Japan and Korea", ["body:Japan", "body:Korea"]),
    ("atleast:2(body:LNG)", "LNG", "liquefied natural gas", None),
    # today's matching rules for terms and phrases
    ('"natural gas"', "", "natural \u00a0 gas", ["body:natural \u00a0 gas"]),
    ("Japan's", "", "Japan\u2019s exports", ["body:Japan\u2019s"]),
    ("straße", "", "STRASSE", ["body:STRASSE"]),
    ("東京 NEAR/1 ガス", "", "東京のガス", ["body:東京", "body:ガス"]),
    ("東京 NEAR/0 ガス", "", "東京のガス", None),
    ("Apple", "", "東京でAppleが", ["body:Apple"]),
    ("lng", "", "LNG prices", ["body:LNG"]),                       # the entity's term, as written
    # OR reports every part that holds
    ("Japan OR Korea", "", "Japan and Korea", ["body:Japan", "body:Korea"]),
    # queries that hold without a hit
    ("NOT Japan", "", "Korea buys gas", []),
    ("NOT Japan", "", "Japan buys gas", None),
    ("Japan OR NOT Korea", "", "nothing here", []),
]


@pytest.mark.parametrize(("query", "title", "body", "expected"), GOLDEN,
                         ids=[f"{q} | {t} | {b}"[:70] for q, t, b, _ in GOLDEN])
def test_golden_cases(query: str, title: str, body: str, expected: list[str] | None) -> None:
    assert fired(query, title, body) == expected


def test_a_term_equal_to_an_entity_name_reports_the_entity_and_its_alias() -> None:
    watchlist = WatchlistConfig(name="desk", entities=ENTITIES, query="Japan NEAR/3 LNG")
    [hit] = compile_watchlists([watchlist]).match("", "Japan buys liquefied natural gas")
    assert hit.entities == ("Japan", "LNG")
    assert [(m.entity, m.term) for m in hit.matches] == [("Japan", "Japan"),
                                                        ("LNG", "liquefied natural gas")]
    assert hit.matches[1].snippet == "Japan buys liquefied natural gas"


def test_an_entity_case_sensitive_setting_applies_to_its_query_term() -> None:
    entities = [{"name": "Apple", "case_sensitive": True}]
    watchlist = WatchlistConfig(name="desk", entities=entities, query="apple NEAR/2 iPhone")
    matcher = compile_watchlists([watchlist])
    assert matcher.match("", "apple and iPhone") == []
    assert len(matcher.match("", "Apple and iPhone")) == 1


def test_source_matches_whole_words_of_the_source_name() -> None:
    assert fired("source:reuters", body="x", source="Reuters World News") == []
    assert fired('source:"world news"', body="x", source="Reuters World News") == []
    assert fired("source:reuter", body="x", source="Reuters World News") is None
    assert fired("Japan source:reuters", body="Japan", source="AP") is None


def test_feed_matches_the_configured_feed_name() -> None:
    assert fired("feed:reuters-world", body="x", feed="reuters-world") == []
    assert fired("feed:reuters", body="x", feed="reuters-world") is None
    assert fired("Japan AND NOT feed:spam", body="Japan", feed="spam") is None


def test_lang_uses_the_given_language_else_detects_it() -> None:
    assert fired("lang:ja", body="anything", language="ja") == []
    assert fired("lang:en", body="anything", language="ja") is None
    japanese = "日本の電力会社は火曜日、冬に向けて液化天然ガスの購入を増やすと発表した。"
    english = "Japan's utilities said on Tuesday they would buy more gas for the winter."
    assert fired("lang:ja", body=japanese) == []
    assert fired("lang:ja", body=english) is None
    assert fired("Japan lang:en", body=english) == ["body:Japan"]


def article(feed_url: str, body: str, source: str = "Wire") -> Article:
    return Article(id="0" * 16, canonical_url="", url="", guid=None, title="", author="",
                   source=source, published=datetime(2025, 2, 6, tzinfo=UTC), paragraphs=(body,),
                   feed=feed_url)


def test_match_article_takes_the_feed_name_and_configured_language_from_the_feeds() -> None:
    feeds = [FeedConfig(url="https://a.example/rss", name="tokyo-desk", language="ja"),
             FeedConfig(url="https://b.example/rss", name="london-desk")]
    matcher = compile_watchlists([WatchlistConfig(name="ja", query="lang:ja"),
                                  WatchlistConfig(name="tokyo", query="feed:tokyo-desk"),
                                  WatchlistConfig(name="wire", query="source:wire Japan")], feeds)
    english = "Japan's utilities said on Tuesday they would buy more gas."
    assert [h.watchlist for h in match_article(matcher, article("https://a.example/rss", english))
            ] == ["ja", "tokyo", "wire"]
    assert [h.watchlist for h in match_article(matcher, article("https://b.example/rss", english))
            ] == ["wire"]


def test_exclusions_still_stop_a_query_watchlist() -> None:
    watchlist = WatchlistConfig(name="desk", query="Japan", exclude=["Japan Airlines"])
    assert compile_watchlists([watchlist]).match("", "Japan Airlines flies to Japan") == []


def test_query_and_entity_watchlists_share_one_matcher_in_configuration_order() -> None:
    matcher = compile_watchlists([
        WatchlistConfig(name="plain", entities=["Japan"]),
        WatchlistConfig(name="always", query="NOT Korea"),
        WatchlistConfig(name="near", query="Japan NEAR/1 LNG"),
        WatchlistConfig(name="never", query="Korea"),
    ])
    assert [h.watchlist for h in matcher.match("", "Japan buys LNG")] == ["plain", "always", "near"]
    assert [h.watchlist for h in matcher.match("", "nothing")] == ["always"]


# -- the grammar ------------------------------------------------------------------------------
def t(text: str, field: str | None = None) -> Term:
    return Term(text, field)


@pytest.mark.parametrize(("query", "tree"), [
    ("a b OR c", Or((And((t("a"), t("b"))), t("c")))),
    ("a OR b AND c", Or((t("a"), And((t("b"), t("c")))))),
    ("NOT a b", And((Not(t("a")), t("b")))),
    ("NOT NOT a", Not(Not(t("a")))),
    ("a NEAR/2 b c", And((Near(t("a"), t("b"), 2, False), t("c")))),
    ("a OR b NEAR/2 c", Or((t("a"), Near(t("b"), t("c"), 2, False)))),
    ("a ONEAR/1 b NEAR/3 c", Near(Near(t("a"), t("b"), 1, True), t("c"), 3, False)),
    ("(a OR b) NEAR/2 c", Near(Or((t("a"), t("b"))), t("c"), 2, False)),
    ("title:(a OR NOT b)", Or((t("a", "title"), Not(t("b", "title"))))),
    ('body:"a b" atleast:2(c)', And((t("a b", "body"), AtLeast(2, t("c"))))),
    ("source:Reuters lang:JA feed:x", And((Attribute("source", "reuters"),
                                          Attribute("lang", "ja"), Attribute("feed", "x")))),
    ("source: reuters", Attribute("source", "reuters")),
    ("\u201cJapan Airlines\u201d", t("Japan Airlines")),
    ("and or not near", And((t("and"), t("or"), t("not"), t("near")))),    # only capitals operate
    ('"AND" 10:30 U.S.', And((t("AND"), t("10:30"), t("U.S.")))),
])
def test_precedence_is_not_near_and_or(query: str, tree: Any) -> None:
    assert parse_query(query) == tree


@pytest.mark.parametrize(("query", "column", "expected"), [
    ("", 1, "the query is empty"),
    ("Japan NEAR/5", 13, "expected a term, a phrase or '(', got the end of the query"),
    ("Japan NEAR LNG", 7, "expected NEAR/n"),
    ("Japan NEAR/x LNG", 7, "expected a number of words after NEAR/"),
    ("(Japan OR (LNG)", 16, "expected ')' to close the '(' at column 1"),
    ("Japan)", 6, "got ')' with no '(' before it"),
    ('title:"Japan', 7, "expected a closing quote"),
    ("NOT Japan NEAR/3 LNG", 11, "NEAR/3 takes terms, phrases, OR of them or NEAR on each side, "
                                 "not NOT"),
    ("Japan NEAR/3 (a AND b)", 7, "not AND"),
    ("Japan NEAR/3 source:x", 7, "not source:"),
    ("atleast:2(a OR NOT b)", 1, "atleast:2 takes terms"),
    ("titel:Japan", 1, "expected title:, body:, source:, feed:, lang: or atleast:N(...), got titel:"),
    ("lang:english", 6, "expected a language code such as en or ja"),
    ("atleast:0(Japan)", 1, "a count of 1 or more"),
    ("atleast:2 Japan", 11, "expected '(' after atleast:2, got Japan"),
    ("atleast:x(Japan)", 1, "expected atleast:N( ... )"),
    ("title:(body:Japan)", 1, "title: over a term already restricted to body:"),
    ("title:body:Japan", 7, "expected a term, a phrase or '(' after title:, got 'body'"),
    ("title:source:x", 7, "expected a term, a phrase or '(' after title:, got 'source'"),
    ("Japan AND", 10, "got the end of the query"),
    ("Japan OR OR LNG", 10, "got OR"),
    ("source:", 8, "expected a name after source:"),
    ('Japan ""', 7, "expected a phrase with words in it"),
])
def test_syntax_errors_give_the_column_and_what_was_expected(query: str, column: int,
                                                             expected: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        parse_query(query)
    assert caught.value.column == column
    assert expected in str(caught.value)
    assert str(caught.value).startswith(f"column {column}: ")


def test_nesting_is_limited_with_a_syntax_error() -> None:
    assert parse_query("(" * 20 + "Japan" + ")" * 20) == t("Japan")
    with pytest.raises(QuerySyntaxError, match="after title:"):
        parse_query("title:" * 5000 + "Japan")                  # no RecursionError either
    with pytest.raises(QuerySyntaxError, match="expected at most 50 NEARs in a row"):
        parse_query("a" + " NEAR/1 a" * 51)
    for deep in ("(" * 60 + "Japan" + ")" * 60, "NOT " * 60 + "Japan",
                 "title:(" * 60 + "Japan" + ")" * 60, "(title:" * 60 + "Japan" + ")" * 60):
        with pytest.raises(QuerySyntaxError, match="expected at most 50 nested"):
            parse_query(deep)


@pytest.mark.parametrize(("query", "needs"), [
    ("a", True), ("a NEAR/1 b", True), ("atleast:2(a)", True), ("a AND NOT b", True),
    ("a OR b", True), ("NOT a", False), ("source:x", False), ("a OR lang:ja", False),
    ("source:x AND a", True), ("NOT (a AND b) AND c", True),
])
def test_only_queries_that_can_hold_without_a_term_are_decided_on_every_article(
        query: str, needs: bool) -> None:
    assert needs_hit(parse_query(query)) is needs


# -- configuration ----------------------------------------------------------------------------
GOOD = """
watchlists:
  - name: one
    entities: [Japan]
  - name: two
    query: 'Japan NEAR/5 LNG'
  - name: three
    query: '{query}'
"""


def test_a_syntax_error_names_the_file_key_path_and_column(tmp_path) -> None:
    (tmp_path / "w.yaml").write_text(GOOD.format(query="Japan NEAR/5 LNG AND (title:x"))
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.problems == [
        f"{tmp_path / 'w.yaml'}: watchlists[2].query: column 30: expected ')' to close the '(' "
        "at column 22, got the end of the query"]


def test_a_watchlist_needs_entities_or_a_query_and_match_only_goes_with_entities(tmp_path) -> None:
    with pytest.raises(ValueError, match="expected entities, a query, or both"):
        WatchlistConfig(name="empty")
    with pytest.raises(ValueError, match="match applies to entities without a query"):
        WatchlistConfig(name="both", query="a", match="all", entities=["a"])
    with pytest.raises(ValueError, match="ISO 639-1 language code"):
        FeedConfig(url="https://a.example/rss", language="english")


def test_a_running_service_keeps_the_last_good_configuration(tmp_path) -> None:
    file = tmp_path / "w.yaml"
    file.write_text(GOOD.format(query="Korea"))
    watcher = ConfigWatcher(tmp_path)
    assert watcher.current().watchlists[2].query == "Korea"
    file.write_text(GOOD.format(query="Korea NEAR/"))
    assert watcher.current().watchlists[2].query == "Korea"
    assert watcher.error is not None
    assert "watchlists[2].query: column 7: expected a number of words after NEAR/" in str(
        watcher.error)
    file.write_text(GOOD.format(query="Korea OR China"))
    assert watcher.current().watchlists[2].query == "Korea OR China"
    assert watcher.error is None


def test_check_refuses_a_query_with_a_syntax_error(tmp_path) -> None:
    (tmp_path / "w.yaml").write_text(GOOD.format(query="Japan AND"))
    result = CliRunner().invoke(main, ["check", "--config", str(tmp_path)])
    assert result.exit_code == 1
    assert "watchlists[2].query: column 10: expected a term, a phrase or '(', got the end of " \
           "the query" in result.output
    (tmp_path / "w.yaml").write_text(GOOD.format(query="Japan AND Korea"))
    (tmp_path / "feeds.yaml").write_text("feeds:\n  - url: https://a.example/rss\n")  # check wants one
    result = CliRunner().invoke(main, ["check", "--config", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "three  query Japan AND Korea" in result.output


@pytest.mark.integration
def test_the_service_gives_queries_the_feed_name_source_and_configured_language(
        tmp_path, redis_url, http_server) -> None:
    rss_type = {"Content-Type": "application/rss+xml; charset=utf-8"}
    http_server.routes["/tokyo"] = (200, rss_type, rss([item(1, "Japan LNG imports", LNG_STORY)],
                                                       title="Nikkei Asia"))
    http_server.routes["/london"] = (200, rss_type, rss([item(2, "Japan rice", RICE_STORY)],
                                                        title="Financial Times"))
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "w.yaml").write_text(yaml.safe_dump({
        "feeds": [{"url": http_server.url("/tokyo"), "name": "tokyo", "full_text": "never",
                   "language": "ja"},
                  {"url": http_server.url("/london"), "name": "london", "full_text": "never"}],
        "watchlists": [
            {"name": "tokyo-ja", "query": "feed:tokyo lang:ja Japan"},
            {"name": "ft", "query": 'source:"financial times" AND (rice OR LNG)'},
            {"name": "english", "query": "lang:en"},
            {"name": "near", "entities": [{"name": "LNG", "aliases": ["liquefied natural gas"]}],
             "query": "Japan NEAR/3 LNG AND NOT feed:london"},
        ]}))
    settings = Settings.from_env({"NEWSMON_CONFIG": str(folder),
                                  "NEWSMON_DUMP_DIR": str(tmp_path / "dump"),
                                  "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8"})
    Service(settings, redis_url).run_once()
    alerts = Service(settings, redis_url).store.alerts()
    fired = sorted((a["watchlist"], a["article"]["title"]) for a in alerts)
    # The Tokyo feed's English story counts as Japanese (its configured language); London's is
    # detected as English.
    assert fired == [("english", "Japan rice"), ("ft", "Japan rice"),
                     ("near", "Japan LNG imports"), ("tokyo-ja", "Japan LNG imports")]
    near = next(a for a in alerts if a["watchlist"] == "near")
    assert [(m["entity"], m["term"], m["field"]) for m in near["matches"]] == [
        ("Japan", "Japan", "title"), ("LNG", "LNG", "title"), ("Japan", "Japan", "body"),
        ("LNG", "liquefied natural gas", "body")]
