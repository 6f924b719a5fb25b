"""Matching articles against watchlists: whole words, case rules, normalization, offsets."""

from __future__ import annotations

import random
import string
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from worker.config import WatchlistConfig
from worker.match import compile_watchlists, match_article, sentence_snippet
from worker.models import Article, Match, WatchlistHit


def watchlist(*entities: Any, name: str = "desk", **options: Any) -> WatchlistConfig:
    return WatchlistConfig(name=name, entities=list(entities), **options)


def hits(entities: list[Any] | WatchlistConfig, title: str = "", body: str = "",
         **options: Any) -> list[WatchlistHit]:
    config = entities if isinstance(entities, WatchlistConfig) else watchlist(*entities, **options)
    return compile_watchlists([config]).match(title, body)


def matched(text: str, *entities: Any, **options: Any) -> list[str]:
    """The original text of every match in ``text`` (as a body)."""
    found = hits(list(entities), body=text, **options)
    return [text[m.start:m.end] for hit in found for m in hit.matches]


# Whole words

@pytest.mark.parametrize("text", ["Japan", "Japan's exports", "Japan’s exports", "US-Japan talks",
                                  "(Japan)", "in Japan.", "«Japan»", "Japan\ntoday"])
def test_name_matches_as_a_whole_word(text: str) -> None:
    assert matched(text, "Japan") == ["Japan"]


@pytest.mark.parametrize("text", ["japanned tin", "Japanese", "NipponJapan", "Japan2", "2Japan",
                                  "Japané", "Japane\u0301"])
def test_name_inside_a_longer_word_does_not_match(text: str) -> None:
    assert matched(text, "Japan") == []


def test_alias_matches_like_the_name() -> None:
    found = hits([{"name": "Bank of Japan", "aliases": ["BoJ"]}], body="The BoJ said.")
    assert [(m.entity, m.term) for m in found[0].matches] == [("Bank of Japan", "BoJ")]


def test_terms_in_scripts_written_without_spaces_match_inside_words() -> None:
    assert matched("日本政府は発表した", "日本") == ["日本"]
    assert matched("ประเทศไทยวันนี้", "ไทย") == ["ไทย"]
    assert matched("東京の", "東京") == ["東京"]
    assert matched("日本2024年", "日本") == ["日本"]


def test_latin_term_matches_between_characters_of_spaceless_scripts() -> None:
    assert matched("東京でAppleが発表", "Apple") == ["Apple"]


def test_combining_marks_continue_a_word() -> None:
    # भारती (a name) is not भारत (India): the vowel sign after it is a mark, not alnum.
    assert matched("भारती आई", "भारत") == []
    assert matched("भारत में", "भारत") == ["भारत"]



def test_a_term_inside_a_longer_word_does_not_hide_a_longer_term() -> None:
    # "korea" ends inside "Korean" before "Korean Air" ends: a non-overlapping search would
    # report the former, drop it as part of a word, and never see the latter.
    assert matched("Korean Air flew to Korea.", "Korea", "Korean Air") == ["Korean Air", "Korea"]


def test_terms_sharing_words_are_all_found_across_spaceless_text() -> None:
    assert matched("東京都庁と東京", "東京", "東京都") == ["東京", "東京都", "東京"]


# Case

def test_matching_ignores_case_by_casefolding() -> None:
    assert matched("STRASSE und strasse", "Straße") == ["STRASSE", "strasse"]
    assert matched("Die Straße.", "Strasse") == ["Straße"]
    assert matched("JAPAN and japan", "Japan") == ["JAPAN", "japan"]


def test_acronyms_match_only_in_capitals() -> None:
    assert matched("let us talk about US policy", "US") == ["US"]
    assert matched("Lng and lng", "LNG") == []
    assert matched("The U.S. and the u.s.", "U.S.") == ["U.S."]


def test_a_single_capital_is_not_an_acronym() -> None:
    assert matched("x ray and X ray", "X ray") == ["x ray", "X ray"]


def test_case_sensitive_true_makes_any_term_match_only_as_written() -> None:
    entity = {"name": "Apple", "aliases": ["Shell"], "case_sensitive": True}
    assert matched("an apple, a shell, Apple and Shell", entity) == ["Apple", "Shell"]


def test_case_sensitive_false_lets_an_acronym_match_in_any_case() -> None:
    entity = {"name": "NATO", "case_sensitive": False}
    assert matched("Nato and NATO", entity) == ["Nato", "NATO"]


def test_case_sensitive_term_is_confirmed_after_characters_that_casefold_to_two() -> None:
    entity = {"name": "Straße", "case_sensitive": True}
    assert matched("ß ß STRASSE, strasse, Straße", entity) == ["Straße"]


def test_same_term_with_different_case_rules_in_several_watchlists() -> None:
    matcher = compile_watchlists([
        watchlist("US", name="acronym"),
        watchlist({"name": "US", "case_sensitive": False}, name="any-case"),
        watchlist({"name": "us", "case_sensitive": True}, name="lowercase"),
    ])
    assert [h.watchlist for h in matcher.match("", "let us go")] == ["any-case", "lowercase"]
    assert [h.watchlist for h in matcher.match("", "US policy")] == ["acronym", "any-case"]


# Whitespace and typographic variants

def test_multiword_term_matches_across_any_whitespace() -> None:
    text = "Buying liquefied\nnatural\u00a0gas and liquefied  \t natural\u2009gas."
    assert matched(text, "liquefied natural gas") == ["liquefied\nnatural\u00a0gas",
                                                      "liquefied  \t natural\u2009gas"]


def test_term_with_extra_spaces_matches_single_spaces() -> None:
    assert matched("natural gas", " natural   gas ") == ["natural gas"]


@pytest.mark.parametrize(("term", "text"), [
    ("Japan's", "Japan’s"), ("Japan's", "Japanʼs"), ("Japan’s", "Japan's"),
    ("US-Japan", "US–Japan"), ("US-Japan", "US—Japan"), ("US-Japan", "US\u2011Japan"),
    ('"Abenomics"', "“Abenomics”"), ('"Abenomics"', "«Abenomics»"),
    ("rock 'n' roll", "rock ‘n’ roll"),
])
def test_typographic_apostrophes_quotes_and_dashes_match_plain_ones(term: str, text: str) -> None:
    assert matched(f"On {text} today", term) == [text]


# What a match reports

def test_match_reports_entity_term_field_offsets_and_snippet() -> None:
    title = "Tokyo  lifts  rates"
    body = "Markets fell.\nThe Bank of Japan raised rates today! Yen rose."
    found = hits([{"name": "BoJ", "aliases": ["Bank of Japan", "Tokyo"]}], title=title, body=body)
    assert found == [WatchlistHit(watchlist="desk", entities=("BoJ",), matches=(
        Match(entity="BoJ", term="Tokyo", field="title", start=0, end=5,
              snippet="Tokyo lifts rates"),
        Match(entity="BoJ", term="Bank of Japan", field="body", start=18, end=31,
              snippet="The Bank of Japan raised rates today!"),
    ))]


def test_offsets_index_the_original_text_after_whitespace_runs_and_casefold() -> None:
    body = "Die  Straße,\n\n  ﬁne   Tokyo\u00a0 Stock\tExchange: STRASSE  Tokyo Stock Exchange"
    found = hits(["Tokyo Stock Exchange", "Strasse"], body=body)
    spans = [body[m.start:m.end] for m in found[0].matches]
    assert spans == ["Straße", "Tokyo\u00a0 Stock\tExchange", "STRASSE", "Tokyo Stock Exchange"]


def test_offsets_after_a_character_that_casefolds_to_two() -> None:
    body = "ß 😀 İSTANBUL ß Japan"    # "ß" folds to "ss", "İ" to "i" and a combining dot
    found = hits(["Japan", "İstanbul"], body=body)
    assert [body[m.start:m.end] for m in found[0].matches] == ["İSTANBUL", "Japan"]



def test_a_lone_surrogate_in_the_text_does_not_stop_matching() -> None:
    body = "\ud800 Japan"    # a JSON feed can escape half a surrogate pair
    assert [(m.start, m.end) for m in hits(["Japan"], body=body)[0].matches] == [(2, 7)]

def test_snippet_is_the_sentence_around_the_match() -> None:
    body = ("Oil rose 3.5% on Monday. Officials in the U.S. said Japan would buy more, "
            "according to “sources.” Prices fell!\nNext paragraph.")
    [hit] = hits(["Japan"], body=body)
    assert hit.matches[0].snippet == ("Officials in the U.S. said Japan would buy more, "
                                      "according to “sources.”")


def test_snippet_does_not_split_at_abbreviations() -> None:
    body = "Talks ended. Mr. Abe met U.S. President Biden in Japan on Monday. Then rain."
    [hit] = hits(["Japan"], body=body)
    assert hit.matches[0].snippet == "Mr. Abe met U.S. President Biden in Japan on Monday."


def test_snippet_ends_at_a_line_break() -> None:
    [hit] = hits(["Japan"], body="Headline about Japan\nFirst paragraph.")
    assert hit.matches[0].snippet == "Headline about Japan"


def test_snippet_collapses_whitespace() -> None:
    [hit] = hits(["Japan"], body="In \t Japan,\u00a0 prices  rose.")
    assert hit.matches[0].snippet == "In Japan, prices rose."


def test_snippet_of_a_long_sentence_is_trimmed_around_the_match() -> None:
    words = [f"word{i}" for i in range(120)]
    body = " ".join(words[:60] + ["Japan"] + words[60:]) + "."
    [hit] = hits(["Japan"], body=body)
    snippet = hit.matches[0].snippet
    assert len(snippet) <= 240
    assert snippet.startswith("…word") and snippet.endswith("…")
    assert "word59 Japan word60" in snippet
    assert " ".join(snippet.strip("…").split()) in body    # cut at word breaks, nothing invented


def test_snippet_helper_keeps_a_match_near_the_start_of_a_long_text() -> None:
    text = "Japan " + "filler " * 100
    snippet = sentence_snippet(text, 0, 5)
    assert snippet.startswith("Japan filler") and snippet.endswith("…") and len(snippet) <= 240


# Watchlist rules

def test_match_any_fires_when_one_entity_matches() -> None:
    assert [h.entities for h in hits(["Japan", "LNG"], body="Japan grew.")] == [("Japan",)]


def test_match_all_fires_only_when_every_entity_matches() -> None:
    config = watchlist("Japan", "LNG", match="all")
    assert hits(config, body="Japan grew.") == []
    [hit] = hits(config, title="LNG prices", body="Japan grew.")
    assert hit.entities == ("Japan", "LNG")


def test_excluded_term_stops_the_watchlist_from_firing() -> None:
    config = watchlist("Japan", exclude=["Japan Airlines"])
    assert hits(config, title="Japan Airlines flight delayed", body="Japan said.") == []
    assert hits(config, body="Japan's airlines.") != []


def test_exclusion_follows_the_same_matching_rules() -> None:
    config = watchlist("Japan", exclude=["JAL", "Japan Airlines"])
    assert hits(config, body="Japan’s jal mascot") != []          # acronym: capitals only
    assert hits(config, body="Japan\nAIRLINES strike") == []      # any whitespace and case


def test_exclusion_only_affects_its_own_watchlist() -> None:
    matcher = compile_watchlists([watchlist("Japan", name="a", exclude=["Japan Airlines"]),
                                  watchlist("Japan", name="b")])
    assert [h.watchlist for h in matcher.match("Japan Airlines", "")] == ["b"]


def test_hits_come_in_configuration_order() -> None:
    matcher = compile_watchlists([watchlist("LNG", name="energy"), watchlist("Japan", name="asia"),
                                  watchlist("Brazil", name="latam")])
    found = matcher.match("Japan buys LNG", "")
    assert [h.watchlist for h in found] == ["energy", "asia"]


def test_entities_are_listed_once_in_configuration_order() -> None:
    [hit] = hits(["LNG", "Japan", "Korea"], body="Japan and Japan buy LNG. Japan.")
    assert hit.entities == ("LNG", "Japan")


def test_matches_are_sorted_title_first_then_by_start() -> None:
    [hit] = hits(["LNG", "Japan"], title="Korea, Japan and LNG", body="LNG for Japan.")
    assert [(m.field, m.start) for m in hit.matches] == [
        ("title", 7), ("title", 17), ("body", 0), ("body", 8)]


def test_overlapping_terms_are_all_reported() -> None:
    [hit] = hits(["Bank of Japan", "Japan", {"name": "New York", "aliases": ["York"]}],
                 body="The Bank of Japan opened in New York.")
    assert [(m.entity, m.term, m.start, m.end) for m in hit.matches] == [
        ("Bank of Japan", "Bank of Japan", 4, 17), ("Japan", "Japan", 12, 17),
        ("New York", "New York", 28, 36), ("New York", "York", 32, 36)]


def test_terms_of_one_entity_that_normalize_alike_report_one_match() -> None:
    [hit] = hits([{"name": "Japan", "aliases": ["japan", "JAPAN ", "Japan"],
                   "case_sensitive": False}], body="Japan")
    assert len(hit.matches) == 1
    [hit] = hits([{"name": "US", "aliases": ["us"]}], body="US")    # exact and folded alike
    assert [m.term for m in hit.matches] == ["US"]


def test_match_article_matches_title_and_paragraphs_joined_by_newlines() -> None:
    article = Article(
        id="0" * 16, canonical_url="", url="", guid=None, title="Energy news", author="",
        source="", published=datetime(2024, 1, 1, tzinfo=UTC), feed="",
        paragraphs=("Imports of liquefied", "natural gas rose."))
    [hit] = match_article(compile_watchlists([watchlist("liquefied natural gas")]), article)
    [m] = hit.matches
    assert (m.field, article.body[m.start:m.end]) == ("body", "liquefied\nnatural gas")


def test_term_count_counts_names_aliases_and_exclusions() -> None:
    matcher = compile_watchlists([
        watchlist({"name": "Japan", "aliases": ["Nippon", "日本"]}, "LNG", exclude=["JAL"]),
        watchlist("Korea", name="other"),
    ])
    assert matcher.term_count == 6


def test_no_watchlists_match_nothing() -> None:
    matcher = compile_watchlists([])
    assert matcher.term_count == 0
    assert matcher.match("Japan", "Japan") == []


def test_one_automaton_handles_a_hundred_thousand_terms() -> None:
    rng = random.Random(1)
    terms = sorted({"".join(rng.choices(string.ascii_lowercase, k=12)) for _ in range(100_000)})
    matcher = compile_watchlists([watchlist(*terms[i:i + 1000], name=f"w{i}")
                                  for i in range(0, len(terms), 1000)])
    assert matcher.term_count == len(terms)
    body = f"Nothing here, then {terms[54321].upper()} and {terms[7]}x."
    [hit] = matcher.match("", body)
    assert (hit.watchlist, hit.entities) == ("w54000", (terms[54321],))


def test_terms_in_large_alphabets_do_not_slow_down_other_text() -> None:
    # pyahocorasick scans a node's children one by one: 20,000 kanji terms under one root made
    # every character of English text cost ~20,000 comparisons before matching went bytewise.
    rng = random.Random(2)
    terms = {"".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(3)) for _ in range(20_000)}
    matcher = compile_watchlists([watchlist(*sorted(terms))])
    body = "Prices rose in Tokyo today, officials said. " * 110 + "米国 " + sorted(terms)[5]
    [hit] = matcher.match("", body)  # no timed assertion: speed is for newsmon bench
    assert [body[m.start:m.end] for m in hit.matches] == [sorted(terms)[5]]


def test_matching_imports_no_network_queue_or_store_library() -> None:
    code = ("import sys, worker.match; "
            "print(sorted({'httpx', 'redis', 'celery'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


# Query watchlists in the shared automaton (the language itself: tests/test_query.py)

def test_queries_are_evaluated_only_for_watchlists_with_a_hit_or_that_need_none(monkeypatch) -> None:
    import worker.match

    calls: list[object] = []
    real = worker.match.evaluate

    def counting(node, found, facts):  # type: ignore[no-untyped-def]
        calls.append(node)
        return real(node, found, facts)

    watchlists = [WatchlistConfig(name=f"q{i}", query=f"Term{i} NEAR/3 Other{i} OR Extra{i}")
                  for i in range(1000)]
    watchlists.append(WatchlistConfig(name="not", query="NOT Korea"))
    matcher = compile_watchlists(watchlists)
    monkeypatch.setattr(worker.match, "evaluate", counting)
    hits = matcher.match("", "Term7 and Other7 met Extra99 in Seoul.")
    assert [h.watchlist for h in hits] == ["q7", "q99", "not"]
    assert len(calls) == 3    # q7, q99 and the NOT query: not the other 998
    assert matcher.term_count == 3001    # Korea counts too


def test_the_language_is_detected_once_and_only_when_a_query_asks(monkeypatch) -> None:
    import worker.match

    asked: list[str] = []
    monkeypatch.setattr(worker.match, "detect_language",
                        lambda title, body: asked.append(body) or "en")
    matcher = compile_watchlists([WatchlistConfig(name="a", query="Japan lang:en"),
                                  WatchlistConfig(name="b", query="Japan AND NOT lang:ja"),
                                  WatchlistConfig(name="c", query="Korea lang:en")])
    assert matcher.match("", "Korea only") and asked == ["Korea only"]
    assert [h.watchlist for h in matcher.match("", "Japan here")] == ["a", "b"]
    assert asked == ["Korea only", "Japan here"]
    assert matcher.match("", "nothing") == [] and len(asked) == 2
    assert matcher.match("", "Japan", language="ja") == [] and len(asked) == 2


def test_a_query_hit_has_the_same_shape_as_an_entity_hit() -> None:
    by_entities = compile_watchlists([watchlist("Japan", {"name": "LNG"})]).match(
        "Japan buys LNG", "")
    by_query = compile_watchlists([WatchlistConfig(name="desk", query="Japan LNG")]).match(
        "Japan buys LNG", "")
    assert by_query == by_entities
