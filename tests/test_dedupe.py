"""Tests for worker/dedupe.py: canonical URLs, fingerprints, MinHash signatures, the story index.

Run as a script (``.venv/bin/python tests/test_dedupe.py``) to print the similarity table and
the timing quoted in docs/dedupe.md.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest

from worker import dedupe
from worker.dedupe import (
    BANDS,
    NUM_PERM,
    RETENTION_SECONDS,
    ROWS,
    THRESHOLD,
    MemoryStoryIndex,
    StoryIndex,
    StoryKeys,
    band_keys,
    canonical_url,
    fingerprint,
    same_story,
    sig_from_hex,
    sig_to_hex,
    signature,
    similarity,
    story_keys,
)
from worker.models import Article

DAY = 24 * 3600.0

# --- Realistic text: one wire story, its reprints, and other stories on the same topic ---------

JAN_TITLE = "Japan's LNG imports fall 8% in January as nuclear restarts cut gas demand"
JAN_BODY = (
    "TOKYO (Reuters) - Japan's imports of liquefied natural gas (LNG) fell 8.1% in January"
    " from a year earlier to 6.12 million tonnes, preliminary data from the Ministry of Finance"
    " showed on Thursday, as the restart of more nuclear reactors and mild weather in the west"
    " of the country reduced the amount of gas burned for power.\n"
    "The world's second-largest LNG buyer after China paid an average of 86,450 yen ($586) per"
    " tonne for its cargoes, down 21% from January last year, reflecting lower spot prices in"
    " Asia and oil-linked contract prices that follow crude with a lag of several months.\n"
    "Imports from Australia, Japan's biggest supplier, slipped to 2.38 million tonnes, while"
    " shipments from the United States rose 14% to 0.71 million tonnes as new liquefaction"
    " capacity on the U.S. Gulf Coast came online. Cargoes from Qatar and Malaysia were broadly"
    " unchanged, the data showed.\n"
    "Utilities have been drawing down inventories built up ahead of the winter. LNG stocks held"
    " by major power companies stood at 2.05 million tonnes as of Feb. 2, according to the"
    " trade ministry, slightly below the five-year average for the time of year.\n"
    "“Demand has been softer than the buyers expected, and several of them are now offering"
    " surplus cargoes back into the spot market,” said a Tokyo-based trader at a Japanese"
    " trading house, who declined to be named because he was not authorised to speak to media.\n"
    "Analysts expect Japan's LNG demand to keep easing over the rest of the decade as more"
    " reactors return to service and solar capacity grows, although the government's latest"
    " energy plan still treats gas as a key transition fuel and calls for long-term supply"
    " contracts to secure stable volumes."
)

DEC_TITLE = "Japan's December LNG imports rise 3% as cold snap lifts power demand"
DEC_BODY = (
    "TOKYO (Reuters) - Japan's imports of liquefied natural gas (LNG) rose 3.2% in December"
    " from a year earlier to 6.87 million tonnes, preliminary data from the Ministry of Finance"
    " showed on Monday, as a cold snap in northern Japan pushed up heating and power demand.\n"
    "For the whole of last year, the world's second-largest LNG buyer after China imported 66.2"
    " million tonnes, down 6% from the year before and the lowest annual total since 2009, as"
    " nuclear restarts and weaker industrial output weighed on consumption.\n"
    "The average price paid in December was 97,310 yen per tonne, down 17% from a year earlier."
    " Shipments from Australia rose to 2.71 million tonnes, while imports from Russia's"
    " Sakhalin-2 project were steady at 0.52 million tonnes despite Western sanctions on"
    " Moscow.\n"
    "Power companies raised generation from gas-fired plants in the second half of the month as"
    " temperatures in Hokkaido and Tohoku fell well below normal. LNG stocks held by major"
    " utilities dropped to 2.21 million tonnes as of Jan. 5 from 2.43 million tonnes a week"
    " earlier, the trade ministry said.\n"
    "“Buyers had to go to the spot market for a handful of prompt cargoes, but there was no"
    " sign of panic,” said an official at a Japanese utility, speaking on condition of"
    " anonymity.\n"
    "Japan's government has asked utilities to hold a strategic buffer of LNG over the winter"
    " after a supply crunch in January 2021 sent spot power prices soaring, and it plans to"
    " expand the scheme from next year."
)

FOLLOW_UP_TITLE = "Japanese buyers resell surplus LNG cargoes as demand slumps"
FOLLOW_UP_BODY = (
    "TOKYO (Reuters) - Japanese utilities and trading houses are reselling a growing number of"
    " liquefied natural gas (LNG) cargoes into the Asian spot market, industry sources said on"
    " Friday, a day after data showed the country's LNG imports fell 8.1% in January.\n"
    "At least six cargoes for delivery in March have been offered by Japanese buyers through"
    " tenders this week, three traders said, adding to a supply overhang that has pushed the"
    " spot price for north Asia to its lowest level in nearly three years.\n"
    "JERA, Japan's largest power generator, said it was optimising its portfolio and declined"
    " to comment on specific cargoes. Kansai Electric Power and Tokyo Gas did not respond to"
    " requests for comment.\n"
    "“It's a buyers' market now. Anyone with a flexible cargo is trying to place it in Europe"
    " or South Asia before storage fills up,” said a Singapore-based LNG trader.\n"
    "The restart of more nuclear reactors and mild weather in the west of the country have"
    " reduced the amount of gas burned for power this winter, while utilities drew down"
    " inventories built up ahead of the cold season.\n"
    "Analysts expect Japan's LNG demand to keep easing over the rest of the decade as more"
    " reactors return to service and solar capacity grows, although the government's latest"
    " energy plan still treats gas as a key transition fuel and calls for long-term supply"
    " contracts to secure stable volumes."
)

AFP_BODY = JAN_BODY.replace("TOKYO (Reuters) -", "Tokyo, Feb 6 (AFP) -")
ADDED_SENTENCE = " The finance ministry will publish final trade figures for January on Feb. 19."


def _straight_quotes(text: str) -> str:
    return text.replace("“", '"').replace("”", '"')


def _curly_apostrophes(text: str) -> str:
    return text.replace("'", "’")


# name -> (title, body) of copies of the January story that must be found as the same story
REPRINTS = {
    "headline in capitals": (JAN_TITLE.upper(), JAN_BODY),
    "AFP dateline": (JAN_TITLE, AFP_BODY),
    "sentence added at the end": (JAN_TITLE, JAN_BODY + ADDED_SENTENCE),
    "typographic quotes swapped": (_curly_apostrophes(JAN_TITLE),
                                   _curly_apostrophes(_straight_quotes(JAN_BODY))),
    "all of these at once": (JAN_TITLE.lower(), _straight_quotes(AFP_BODY) + ADDED_SENTENCE),
    "last paragraph cut": (JAN_TITLE, JAN_BODY.rsplit("\n", 1)[0]),
}
# name -> (title, body) of other stories that must not be taken for the January story
OTHER_STORIES = {
    "December imports, a month earlier": (DEC_TITLE, DEC_BODY),
    "follow-up the next day": (FOLLOW_UP_TITLE, FOLLOW_UP_BODY),
}
JAN_URL = "https://www.reuters.com/business/energy/japan-lng-imports-january-2024-02-06/"


def make_article(title: str, body: str, url: str = JAN_URL, guid: str | None = None) -> Article:
    return Article(
        id="0123456789abcdef", canonical_url=canonical_url(url) if url else "", url=url,
        guid=guid, title=title, author="", source="Reuters",
        published=datetime(2024, 2, 6, 3, 15, tzinfo=UTC),
        paragraphs=tuple(body.split("\n")), feed="https://example.com/feed.xml",
    )


def similarity_table() -> list[tuple[str, str, float]]:
    """(side, case, similarity to the January story) for every hand-written case."""
    original = signature(JAN_TITLE, JAN_BODY)
    rows = [("reprint", name, similarity(original, signature(*text)))
            for name, text in REPRINTS.items()]
    rows += [("other story", name, similarity(original, signature(*text)))
             for name, text in OTHER_STORIES.items()]
    return rows


# --- canonical_url ------------------------------------------------------------------------------

def test_canonical_url_lowercases_scheme_and_host_but_not_path():
    assert canonical_url("HTTPS://WWW.Reuters.COM/Business/LNG") == \
        "https://www.reuters.com/Business/LNG"


def test_canonical_url_drops_default_port_and_fragment():
    assert canonical_url("http://example.com:80/a#top") == "http://example.com/a"
    assert canonical_url("https://example.com:443/a#top") == "https://example.com/a"


def test_canonical_url_keeps_other_ports():
    assert canonical_url("https://example.com:8443/a") == "https://example.com:8443/a"
    assert canonical_url("http://example.com:443/a") == "http://example.com:443/a"


def test_canonical_url_gives_a_bare_host_a_root_path():
    assert canonical_url("https://Example.com") == "https://example.com/"


@pytest.mark.parametrize("param", [
    "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "UTM_Source",
    "fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "igshid", "yclid", "_ga",
])
def test_canonical_url_removes_tracking_params(param):
    url = f"https://example.com/story?id=7&{param}=abc123"
    assert canonical_url(url) == "https://example.com/story?id=7"


def test_canonical_url_sorts_remaining_query_params():
    assert canonical_url("https://example.com/s?page=2&b=&a=1&utm_medium=rss") == \
        "https://example.com/s?a=1&b=&page=2"


def test_canonical_url_returns_malformed_urls_as_given():
    assert canonical_url(" http://example.com:port/a#b ") == "http://example.com:port/a#b"
    assert canonical_url("http://[::1/a") == "http://[::1/a"


def _random_url(rng: random.Random) -> str:
    scheme = rng.choice(["http", "https", "HTTP", "Https"])
    host = rng.choice(["example.com", "WWW.Example.COM", "[::1]", "news.example.co.jp",
                       "bücher.example", "127.0.0.1", "user:pw@example.org"])
    port = rng.choice(["", ":80", ":443", ":8080"])
    path = rng.choice(["", "/", "/a/B/c", "/a%20b", "/%7Euser/", "/ümlaut", "/a;b", "/a/../b"])
    names = ["id", "page", "q", "B", "a", "utm_source", "utm_campaign", "fbclid", "gclid",
             "mc_eid", "ref", "x y", "ü", ""]
    values = ["", "1", "a b", "a+b", "%2B", "ü", "=", "&", "x;y", "%zz"]
    query = urlencode([(rng.choice(names), rng.choice(values)) for _ in range(rng.randint(0, 5))])
    fragment = rng.choice(["", "#", "#top", "#a?b=c"])
    return f"{scheme}://{host}{port}{path}{'?' + query if query else ''}{fragment}"


def test_canonical_url_is_idempotent():
    rng = random.Random(7)
    urls = [_random_url(rng) for _ in range(2000)] + [
        "", "   ", "/relative/path?a=1", "//example.com/x", "mailto:desk@example.com",
        "tag:reuters.com,2024:newsml_L4N3EJ0AB", "http://example.com/?a", "http://e.com/?a=1;b=2",
    ]
    for url in urls:
        once = canonical_url(url)
        assert canonical_url(once) == once, url


def test_canonical_url_makes_tracked_copies_of_a_link_equal():
    tracked = JAN_URL.replace("https://www.reuters.com", "HTTPS://WWW.REUTERS.COM:443") + \
        "?utm_source=twitter&utm_medium=social&fbclid=IwAR0xyz#comments"
    assert canonical_url(tracked) == canonical_url(JAN_URL)


# --- fingerprint --------------------------------------------------------------------------------

def test_fingerprint_is_32_lowercase_hex_digits():
    assert re.fullmatch(r"[0-9a-f]{32}", fingerprint(JAN_TITLE, JAN_BODY))


def test_fingerprint_ignores_case_punctuation_quotes_and_spacing():
    variant_title = "  JAPAN’S LNG imports fall 8 % in January — as nuclear restarts cut gas demand"
    variant_body = _curly_apostrophes(_straight_quotes(JAN_BODY)).replace(" ", "   ") \
        .replace("\n", "\n\n").replace(", ", " , ").upper()
    assert fingerprint(variant_title, variant_body) == fingerprint(JAN_TITLE, JAN_BODY)


def test_fingerprint_ignores_the_dots_of_acronyms():
    assert fingerprint("U.S. LNG exports rise", "") == fingerprint("US LNG exports rise", "")


def test_fingerprint_changes_with_any_word():
    assert fingerprint(JAN_TITLE, JAN_BODY) != fingerprint(JAN_TITLE, JAN_BODY + " Updated.")
    assert fingerprint(JAN_TITLE, JAN_BODY) != \
        fingerprint(JAN_TITLE, JAN_BODY.replace("8.1%", "8.2%"))


# --- signature, similarity, band keys -----------------------------------------------------------

def test_signature_has_num_perm_32_bit_values():
    sig = signature(JAN_TITLE, JAN_BODY)
    assert len(sig) == NUM_PERM == 128
    assert all(isinstance(value, int) and 0 <= value < 2**32 for value in sig)


def test_signature_values_are_pinned():
    # Stored signatures stay comparable only while these values hold: a change of datasketch's
    # scheme, the seed or the shingling fails here before it silently splits every story.
    assert signature("Japan LNG imports fall", "")[:4] == \
        (4019684235, 2710319164, 2115402174, 1185512943)


def test_signature_of_a_text_without_words_is_empty():
    assert signature("", "") == ()
    assert signature(" — ", "…") == ()


def test_signature_of_a_text_shorter_than_a_shingle_is_one_shingle():
    assert signature("LNG", "") != signature("coal", "")
    assert signature("LNG", "") == signature("lng", "")


def test_similarity_of_a_signature_with_itself_is_one():
    sig = signature(JAN_TITLE, JAN_BODY)
    assert similarity(sig, sig) == 1.0
    assert same_story(sig, sig)


def test_similarity_with_an_empty_signature_is_zero():
    assert similarity((), signature(JAN_TITLE, JAN_BODY)) == 0.0
    assert similarity((), ()) == 0.0
    assert not same_story((), ())


def test_similarity_refuses_signatures_of_different_lengths():
    with pytest.raises(ValueError):
        similarity((1, 2, 3), (1, 2))


def test_similarity_is_the_fraction_of_equal_slots():
    assert similarity((1, 2, 3, 4), (1, 2, 0, 0)) == 0.5


def test_signature_hex_round_trips_with_8_digits_a_value():
    sig = signature(JAN_TITLE, JAN_BODY)
    packed = sig_to_hex(sig)
    assert re.fullmatch(r"[0-9a-f]{1024}", packed)
    assert sig_from_hex(packed) == sig
    assert sig_to_hex((0, 2**32 - 1)) == "00000000ffffffff"


def test_sig_from_hex_refuses_a_partial_value():
    with pytest.raises(ValueError):
        sig_from_hex("0000000")


def test_band_keys_are_slices_of_the_packed_signature():
    sig = signature(JAN_TITLE, JAN_BODY)
    keys = band_keys(sig)
    packed = sig_to_hex(sig)
    assert len(keys) == BANDS == NUM_PERM // ROWS
    for band, key in enumerate(keys):
        index, rows = key.split(":")
        assert int(index) == band
        assert rows == packed[band * ROWS * 8:(band + 1) * ROWS * 8]


def test_band_keys_of_a_reprint_share_some_band():
    original = set(band_keys(signature(JAN_TITLE, JAN_BODY)))
    for title, body in REPRINTS.values():
        assert original & set(band_keys(signature(title, body)))


def test_band_keys_of_an_empty_signature_are_empty():
    assert band_keys(()) == ()


def candidate_probability(jaccard: float) -> float:
    """Chance that two texts of this Jaccard similarity share at least one band."""
    return 1 - (1 - jaccard**ROWS) ** BANDS


def test_bands_make_pairs_at_the_threshold_candidates():
    assert candidate_probability(THRESHOLD) > 0.98
    assert candidate_probability(0.8) > 0.999999


def test_bands_rarely_make_unrelated_texts_candidates():
    assert candidate_probability(0.1) < 0.01


# --- Hand-written reprints and other stories ----------------------------------------------------

@pytest.mark.parametrize("name", REPRINTS)
def test_reprint_is_the_same_story(name):
    original, copy = signature(JAN_TITLE, JAN_BODY), signature(*REPRINTS[name])
    assert same_story(original, copy), f"{name}: {similarity(original, copy):.3f}"


@pytest.mark.parametrize("name", OTHER_STORIES)
def test_other_story_on_the_same_topic_is_not_the_same_story(name):
    original, other = signature(JAN_TITLE, JAN_BODY), signature(*OTHER_STORIES[name])
    assert not same_story(original, other), f"{name}: {similarity(original, other):.3f}"


def test_threshold_leaves_a_margin_on_both_sides():
    rows = similarity_table()
    lowest_reprint = min(score for side, _, score in rows if side == "reprint")
    highest_other = max(score for side, _, score in rows if side == "other story")
    assert lowest_reprint - THRESHOLD >= 0.1
    assert THRESHOLD - highest_other >= 0.3


# --- story_keys ---------------------------------------------------------------------------------

def test_story_keys_use_the_canonical_url():
    tracked = JAN_URL + "?utm_source=rss&utm_medium=feed#main"
    keys = story_keys(make_article(JAN_TITLE, JAN_BODY, url=tracked))
    assert keys.url == JAN_URL


def test_story_keys_have_no_url_without_a_link():
    assert story_keys(make_article(JAN_TITLE, JAN_BODY, url="")).url is None


def test_story_keys_ignore_a_link_to_a_home_page():
    assert story_keys(make_article(JAN_TITLE, JAN_BODY, url="https://www.reuters.com/")).url \
        is None


def test_story_keys_keep_a_guid_that_is_not_the_link():
    guid = "tag:reuters.com,2024:newsml_L4N3EJ0AB"
    assert story_keys(make_article(JAN_TITLE, JAN_BODY, guid=guid)).guid == guid


def test_story_keys_drop_a_guid_that_is_just_the_link():
    assert story_keys(make_article(JAN_TITLE, JAN_BODY, guid=JAN_URL)).guid is None
    assert story_keys(make_article(JAN_TITLE, JAN_BODY, guid=JAN_URL + "?utm_source=x")).guid \
        is None


def test_story_keys_carry_fingerprint_signature_and_bands():
    keys = story_keys(make_article(JAN_TITLE, JAN_BODY))
    assert keys.fingerprint == fingerprint(JAN_TITLE, JAN_BODY)
    assert keys.signature == signature(JAN_TITLE, JAN_BODY)
    assert keys.bands == band_keys(keys.signature)


def test_story_keys_leave_out_the_content_of_a_short_item():
    keys = story_keys(make_article("Markets live", "Follow our coverage."))
    assert (keys.fingerprint, keys.signature, keys.bands) == ("", (), ())
    assert keys.url == JAN_URL


# --- MemoryStoryIndex ---------------------------------------------------------------------------

def keys_of(title: str = JAN_TITLE, body: str = JAN_BODY, url: str = JAN_URL,
            guid: str | None = None) -> StoryKeys:
    return story_keys(make_article(title, body, url=url, guid=guid))


def test_memory_index_is_a_story_index():
    index: StoryIndex = MemoryStoryIndex()
    assert index.claim(keys_of(), "s1", 0.0) == ("s1", True)


def test_first_copy_starts_a_story_and_the_same_copy_finds_it():
    index = MemoryStoryIndex()
    assert index.claim(keys_of(), "s1", 0.0) == ("s1", True)
    assert index.claim(keys_of(), "s2", 60.0) == ("s1", False)
    assert len(index) == 1


def test_same_url_is_the_same_story_even_after_an_update():
    index = MemoryStoryIndex()
    index.claim(keys_of(), "s1", 0.0)
    updated = keys_of(FOLLOW_UP_TITLE, FOLLOW_UP_BODY, url=JAN_URL + "?utm_source=rss")
    assert index.claim(updated, "s2", 60.0) == ("s1", False)


def test_same_guid_is_the_same_story():
    index = MemoryStoryIndex()
    guid = "tag:reuters.com,2024:newsml_L4N3EJ0AB"
    index.claim(keys_of(guid=guid), "s1", 0.0)
    moved = keys_of(DEC_TITLE, DEC_BODY, url="https://example.com/moved", guid=guid)
    assert index.claim(moved, "s2", 60.0) == ("s1", False)


def test_same_text_at_another_url_is_the_same_story():
    index = MemoryStoryIndex()
    index.claim(keys_of(), "s1", 0.0)
    copy = keys_of(JAN_TITLE.upper(), _straight_quotes(JAN_BODY), url="https://example.com/a")
    assert index.claim(copy, "s2", 60.0) == ("s1", False)


@pytest.mark.parametrize("name", REPRINTS)
def test_near_duplicate_at_another_url_is_the_same_story(name):
    index = MemoryStoryIndex()
    index.claim(keys_of(), "s1", 0.0)
    copy = keys_of(*REPRINTS[name], url="https://www.japantimes.co.jp/news/lng")
    assert index.claim(copy, "s2", 60.0) == ("s1", False)


def test_a_near_duplicate_is_recorded_so_its_next_copy_is_an_exact_hit():
    index = MemoryStoryIndex()
    index.claim(keys_of(), "s1", 0.0)
    afp = keys_of(JAN_TITLE, AFP_BODY, url="https://www.france24.com/en/lng")
    index.claim(afp, "s2", 60.0)
    by_fingerprint_only = StoryKeys(url=None, guid=None, fingerprint=afp.fingerprint,
                                    signature=(), bands=())
    by_url_only = StoryKeys(url=afp.url, guid=None, fingerprint="", signature=(), bands=())
    assert index.claim(by_fingerprint_only, "s3", 120.0) == ("s1", False)
    assert index.claim(by_url_only, "s4", 120.0) == ("s1", False)


@pytest.mark.parametrize("name", OTHER_STORIES)
def test_other_story_on_the_same_topic_starts_its_own_story(name):
    index = MemoryStoryIndex()
    index.claim(keys_of(), "s1", 0.0)
    other = keys_of(*OTHER_STORIES[name], url="https://www.reuters.com/other/")
    assert index.claim(other, "s2", 60.0) == ("s2", True)


def test_a_key_of_another_story_is_not_taken_over():
    index = MemoryStoryIndex()
    index.claim(keys_of(), "jan", 0.0)
    dec_url = "https://www.reuters.com/dec/"
    index.claim(keys_of(DEC_TITLE, DEC_BODY, url=dec_url), "dec", 10.0)
    # A copy at December's URL with January's text belongs to December (URL comes first)...
    assert index.claim(keys_of(url=dec_url), "x", 20.0) == ("dec", False)
    # ...but January's fingerprint still names January.
    assert index.claim(keys_of(url=""), "y", 30.0) == ("jan", False)


def test_look_alike_stories_do_not_crowd_out_the_story_of_a_copy():
    rng = random.Random(3)
    copy = tuple(rng.getrandbits(32) for _ in range(NUM_PERM))
    story = tuple(value if rng.random() < 0.7 else rng.getrandbits(32) for value in copy)
    index = MemoryStoryIndex()
    index.claim(StoryKeys(None, None, "", story, band_keys(story)), "z-story", 0.0)
    for band in range(BANDS):  # each look-alike shares one band with the copy, and sorts first
        decoy = tuple(value if slot // ROWS == band else rng.getrandbits(32)
                      for slot, value in enumerate(copy))
        index.claim(StoryKeys(None, None, "", decoy, band_keys(decoy)), f"a{band:02}", 1.0)
    assert similarity(copy, story) >= THRESHOLD
    assert index.claim(StoryKeys(None, None, "", copy, band_keys(copy)), "new", 2.0) == \
        ("z-story", False)


def test_an_article_without_any_key_always_starts_a_story():
    index = MemoryStoryIndex()
    bare = keys_of("Markets live", "", url="")
    assert index.claim(bare, "s1", 0.0) == ("s1", True)
    assert index.claim(bare, "s2", 1.0) == ("s2", True)


def test_retention_defaults_to_30_days():
    assert MemoryStoryIndex().retention == RETENTION_SECONDS == 30 * DAY


def test_a_story_is_forgotten_after_the_retention_window():
    index = MemoryStoryIndex(retention=30 * DAY)
    index.claim(keys_of(), "s1", 0.0)
    assert index.claim(keys_of(), "s2", 30 * DAY) == ("s2", True)
    assert len(index) == 1


def test_a_story_is_kept_within_the_retention_window():
    index = MemoryStoryIndex(retention=30 * DAY)
    index.claim(keys_of(), "s1", 0.0)
    assert index.claim(keys_of(), "s2", 30 * DAY - 1) == ("s1", False)


def test_each_copy_restarts_the_retention_window():
    index = MemoryStoryIndex(retention=30 * DAY)
    index.claim(keys_of(), "s1", 0.0)
    index.claim(keys_of(JAN_TITLE, AFP_BODY, url="https://www.france24.com/en/lng"), "s2", 20 * DAY)
    near = keys_of(*REPRINTS["sentence added at the end"], url="https://example.com/b")
    assert index.claim(near, "s3", 45 * DAY) == ("s1", False)


def test_forgotten_stories_free_their_band_keys():
    index = MemoryStoryIndex(retention=DAY)
    for day in range(10):
        index.claim(keys_of(f"Story {day}", f"{DEC_BODY} Day {day}.", url=""), f"s{day}", day * DAY)
        # band entries go with their epoch: never older than 1.5 retention windows
        assert set().union(*index._bands.values()) <= {f"s{day - 1}", f"s{day}"}
    assert len(index) == 1


# --- Generated reprints: recall and false positives ---------------------------------------------

# Sentence patterns of commodity-trade news: distinct generated articles share many of them,
# so they overlap far more than unrelated real stories do.
TEMPLATES = [
    "{country}'s imports of {commodity} {moved} {pct}% in {month} from a year earlier, data "
    "from the {agency} showed on {weekday}.",
    "Shipments from {country} {moved} to {num} million tonnes, while cargoes from {country2} "
    "were broadly unchanged.",
    "The average price paid for {commodity} was {num} dollars a tonne, {moved} {pct}% from the "
    "previous month.",
    "{company} said it expected demand for {commodity} to {trend} over the next {small} years "
    "as {reason}.",
    "Analysts at {company} said the figures pointed to {adjective} demand in {region} for the "
    "rest of the year.",
    "“We are seeing {adjective} interest from buyers in {region},” said {person}, a trader at "
    "{company} in {city}.",
    "Stocks held by major {holders} stood at {num} million tonnes as of {month} {day}, the "
    "{agency} said.",
    "{company} shares {moved} {pct}% in {city} trading after the figures were published.",
    "The government of {country} plans to {policy} by {year}, according to a draft seen by "
    "reporters.",
    "{person}, chief economist at {company}, said {reason} would keep prices {adjective} in the "
    "near term.",
    "Output at the {company} plant in {city} was cut by {pct}% after a {incident} on {weekday}.",
    "Freight rates for {commodity} carriers {moved} to {num} dollars a day, the highest since "
    "{year}.",
    "{country} overtook {country2} as the largest supplier of {commodity} to {region} in "
    "{month}.",
    "Officials from {country} and {country2} are due to meet in {city} on {weekday} to discuss "
    "{topic}.",
    "The {agency} will publish revised figures for {month} on {month2} {day}.",
    "Spot prices for {commodity} delivered to {region} {moved} to {num} dollars, traders said.",
    "Demand from {holders} has been {adjective} because {reason}, {person} told reporters.",
    "{company} signed a {small}-year supply deal with {company2} for {num} million tonnes a "
    "year.",
    "Imports for the first {small} months of the year totalled {num} million tonnes, {moved} "
    "{pct}%.",
    "The {agency} said {topic} remained a priority and it would review {policy2} before {year}.",
    "Inventories in {region} are {pct}% above the five-year average for the time of year, data "
    "showed.",
    "{person} said the market would watch {topic} closely in the coming weeks.",
    "Strikes at terminals in {country} delayed {small} cargoes bound for {region} last week.",
    "{company2} is expected to start its new {commodity} project in {country} in {year}.",
]
SLOTS = {
    "country": ["Japan", "South Korea", "China", "India", "Taiwan", "Australia", "Qatar",
        "Malaysia", "Indonesia", "Norway", "Brazil", "Chile"],
    "commodity": ["liquefied natural gas", "thermal coal", "crude oil", "iron ore",
        "copper concentrate", "wheat", "soybeans", "naphtha", "diesel", "ammonia"],
    "moved": ["rose", "fell", "climbed", "slipped", "jumped", "dropped", "edged up", "eased"],
    "month": ["January", "February", "March", "April", "May", "June", "July", "August",
        "September", "October", "November", "December"],
    "agency": ["finance ministry", "trade ministry", "customs office", "statistics bureau",
        "energy agency", "central bank"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
    "company": ["JERA", "Mitsui", "Mitsubishi", "Marubeni", "Kogas", "Sinopec", "Petronas",
        "Woodside", "Shell", "Glencore", "Vale", "BHP", "Tokyo Gas", "Inpex"],
    "trend": ["rise", "fall", "stabilise", "recover", "weaken", "plateau"],
    "reason": ["nuclear reactors return to service", "industrial output slows",
        "new capacity comes online", "weather stays mild", "the yen weakens",
        "freight costs climb", "renewable generation grows"],
    "adjective": ["weak", "strong", "steady", "volatile", "subdued", "robust", "patchy"],
    "region": ["north Asia", "Europe", "South Asia", "the Middle East", "Southeast Asia",
        "Latin America"],
    "person": ["Kenji Sato", "Maria Lopez", "Li Wei", "Anna Berg", "Rahul Mehta", "Tom Baker",
        "Yuki Tanaka", "Sara Cohen"],
    "city": ["Tokyo", "Singapore", "Seoul", "London", "Sydney", "Shanghai", "Mumbai", "Houston"],
    "holders": ["utilities", "refiners", "steelmakers", "traders", "power companies", "importers"],
    "policy": ["cut emissions by half", "restart idle reactors", "build new import terminals",
        "expand strategic reserves", "subsidise household bills"],
    "policy2": ["its supply contracts", "the subsidy scheme", "emergency reserve rules",
        "import tariffs"],
    "incident": ["power outage", "fire", "equipment failure", "typhoon", "labour dispute"],
    "topic": ["energy security", "price caps", "long-term contracts", "shipping safety",
        "carbon pricing"],
}


def _fill(rng: random.Random, template: str) -> str:
    """The template with a random choice in every slot."""
    values = {slot: rng.choice(choices) for slot, choices in SLOTS.items()}
    values.update(country2=rng.choice(SLOTS["country"]), company2=rng.choice(SLOTS["company"]),
                  month2=rng.choice(SLOTS["month"]), pct=f"{rng.uniform(0.5, 30):.1f}",
                  num=f"{rng.uniform(0.2, 90):.2f}", day=rng.randint(1, 28),
                  year=rng.randint(2015, 2035), small=rng.randint(2, 12))
    return template.format(**values)


def generated_article(rng: random.Random) -> tuple[str, list[str]]:
    """A headline and 16 sentences (~280 words) from the patterns above."""
    return _fill(rng, rng.choice(TEMPLATES[:3])), [_fill(rng, t) for t in rng.sample(TEMPLATES, 16)]


def generated_reprint(rng: random.Random, sentences: list[str]) -> str:
    """The body with one sentence added somewhere and 2-4% of its words replaced."""
    sentences = list(sentences)
    sentences.insert(rng.randrange(len(sentences) + 1), _fill(rng, rng.choice(TEMPLATES)))
    words = " ".join(sentences).split(" ")
    for i in rng.sample(range(len(words)), round(len(words) * rng.uniform(0.02, 0.04))):
        words[i] = rng.choice(["reportedly", "also", "sharply", "Asia", "prices", "the", "said"])
    return " ".join(words)


def generated_corpus(count: int = 100, seed: int = 2024) -> tuple[list, list]:
    """``count`` originals and a reprint of each, as (title, body) pairs."""
    rng = random.Random(seed)
    articles = [generated_article(rng) for _ in range(count)]
    originals = [(title, " ".join(sentences)) for title, sentences in articles]
    reprints = [(title, generated_reprint(rng, sentences)) for title, sentences in articles]
    return originals, reprints


def test_generated_reprints_are_found():
    originals, reprints = generated_corpus()
    found = sum(same_story(signature(*original), signature(*reprint))
                for original, reprint in zip(originals, reprints, strict=True))
    assert found >= 95


def test_generated_distinct_articles_are_never_the_same_story():
    signatures = [signature(*original) for original in generated_corpus()[0]]
    false_positives = [(i, j) for i, a in enumerate(signatures) for j in range(i + 1, 100)
                       if same_story(a, signatures[j])]
    assert false_positives == []


def test_index_files_generated_reprints_under_their_originals():
    originals, reprints = generated_corpus()
    index = MemoryStoryIndex()
    for n, original in enumerate(originals):
        assert index.claim(keys_of(*original, url=f"https://a.example/{n}"), f"s{n}", n) == \
            (f"s{n}", True)
    claimed = [index.claim(keys_of(*reprint, url=f"https://b.example/{n}"), f"r{n}", 1000 + n)
               for n, reprint in enumerate(reprints)]
    assert sum(claimed[n] == (f"s{n}", False) for n in range(100)) >= 95
    assert all(claimed[n] in ((f"s{n}", False), (f"r{n}", True)) for n in range(100))


# --- Determinism and purity across processes ----------------------------------------------------

def _run_python(code: str, hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stdout.strip()


@pytest.mark.integration
def test_signature_is_identical_in_other_processes():
    code = ("import json; from worker.dedupe import signature, sig_to_hex; "
            f"print(sig_to_hex(signature({JAN_TITLE!r}, {JAN_BODY!r})))")
    expected = sig_to_hex(signature(JAN_TITLE, JAN_BODY))
    assert _run_python(code, "1") == _run_python(code, "2") == expected


def test_dedupe_names_no_network_queue_or_store_library():
    tree = ast.parse(Path(dedupe.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"httpx", "redis", "celery"}


@pytest.mark.integration
def test_dedupe_loads_no_network_or_queue_library():
    # Not redis: datasketch's package __init__ imports it for its optional Redis LSH storage.
    code = ("import json, sys, worker.dedupe; "
            "print(json.dumps(sorted({'httpx', 'celery'} & set(sys.modules))))")
    assert json.loads(_run_python(code, "0")) == []


# --- Figures for docs/dedupe.md -----------------------------------------------------------------

def unrelated_article(rng: random.Random, cum_weights: list[float]) -> tuple[str, list[str]]:
    """A headline and ~300 words drawn with Zipf frequencies from 20,000 words: unrelated
    stories that still share their commonest phrases, as real news does."""
    body = rng.choices(range(len(cum_weights)), cum_weights=cum_weights, k=300)
    return f"story {rng.random()}", [" ".join(f"w{word}" for word in body)]


def benchmark(corpus: str, stories: int = 100_000, probes: int = 1000) -> dict[str, float]:
    """ms per new article for signature alone and for story_keys + claim on a full index;
    ``corpus`` is "templates" (look-alike articles, the hard case) or "unrelated"."""
    rng = random.Random(1)
    cum_weights = list(itertools.accumulate(1 / rank for rank in range(1, 20_001)))
    make = (generated_article if corpus == "templates" else
            functools.partial(unrelated_article, cum_weights=cum_weights))
    texts = [(title, " ".join(sentences))
             for title, sentences in (make(rng) for _ in range(stories + probes))]
    index = MemoryStoryIndex()
    for n, text in enumerate(texts[:stories]):
        index.claim(keys_of(*text, url=f"https://a.example/{n}"), f"s{n}", n)
    probe_texts = texts[stories:]
    start = time.perf_counter()
    for title, body in probe_texts:
        signature(title, body)
    signature_ms = (time.perf_counter() - start) * 1000 / probes
    articles = [make_article(*text, url=f"https://b.example/{n}")
                for n, text in enumerate(probe_texts)]
    start = time.perf_counter()
    for n, article in enumerate(articles):
        index.claim(story_keys(article), f"p{n}", stories + n)
    claim_ms = (time.perf_counter() - start) * 1000 / probes
    return {"corpus": corpus, "stories": len(index), "signature_ms": round(signature_ms, 3),
            "keys_and_claim_ms": round(claim_ms, 3),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


if __name__ == "__main__":
    for side, name, score in similarity_table():
        print(f"{side:12} {name:36} {score:.3f}")
    originals, reprints = generated_corpus()
    print("generated reprints, lowest similarities:", sorted(
        round(similarity(signature(*o), signature(*r)), 3)
        for o, r in zip(originals, reprints, strict=True))[:5])
    signatures = [signature(*original) for original in originals]
    print("generated distinct pairs, highest similarities:", sorted(
        round(similarity(a, signatures[j]), 3)
        for i, a in enumerate(signatures) for j in range(i + 1, 100))[-5:])
    print(benchmark("unrelated"))
    print(benchmark("templates"))
