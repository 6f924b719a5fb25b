"""Alert shaping's per-watchlist and per-story scripts on the real three-node Redis Cluster the
test session starts on loopback ports: each script's KEYS share one slot, or Cluster refuses it."""

from __future__ import annotations

import time

import pytest

from worker.store import Store, connect

pytestmark = pytest.mark.integration


def alert(n: int) -> dict:
    return {"id": f"alert_{n:032x}", "story": f"{n:016x}", "created": f"2025-01-01T00:00:0{n}"}


@pytest.mark.parametrize("watchlist", ["japan-energy", "a{b}c"])
def test_the_shaping_scripts_run_on_a_redis_cluster(cluster_url, watchlist):
    store = Store(connect(cluster_url, "cluster"))
    shaping = store.shaping
    now = time.time()
    window = (now - 1, now + 60)
    verdicts = [shaping.shape_alert(watchlist, alert(n)["id"], alert(n), now, "both", 1,
                                    now - 3600, window) for n in (1, 2, 3)]
    assert verdicts == ["send", "digest", "digest"]
    assert shaping.shape_alert(watchlist, alert(2)["id"], alert(2), now, "both", 1, now - 3600,
                               window) == "kept"
    assert shaping.seal_window(watchlist, now, window, force=True) == 1
    [(field, _, _, items)] = shaping.sealed(watchlist)
    assert sorted(a["id"] for a in items) == [alert(2)["id"], alert(3)["id"]]
    shaping.drop_sealed(watchlist, field)
    assert shaping.pending_counts(watchlist) == {"window": 0, "held": 0, "sealed": 0}

    assert shaping.shape_alert(watchlist, alert(4)["id"], alert(4), now, "throttle", 0,
                               now - 3600, (0, 0)) == "held"
    assert not shaping.flush_held(watchlist, now, 1, now - 3600)   # alert 1 holds the slot
    assert shaping.flush_held(watchlist, now + 1, 1, now)           # ... until it ages out
    assert [f.split("|")[0] for f, *_ in shaping.sealed(watchlist)] == ["h"]

    story = "0123456789abcdef"
    update = {"id": "update_1", "outlets": 2, "created": "x", "changed": ["outlets"]}
    assert shaping.claim_update(watchlist, story, update, now, 600) == ("send", "")
    assert shaping.claim_update(watchlist, story, {**update, "id": "update_2"}, now + 1,
                                600)[0] == "held"
    assert shaping.due_updates(watchlist, now + 601) == [story]
    held = shaping.take_updates(watchlist, story, now + 601, 600)
    assert '"update_2"' in held
    shaping.commit_updates(watchlist, story, held)
    assert shaping.due_updates(watchlist, now + 601) == []

    copies, candidates = shaping.record_copy(story, "https://a.example/rss",
                                             {"feed": "https://a.example/rss"},
                                             {watchlist: alert(5)}, now)
    assert list(copies) == ["https://a.example/rss"] and list(candidates) == [watchlist]
    shaping.track_revision("00000000000000aa", {"rev": "r1", "story": story}, now,
                           only_new=True)
    assert shaping.revisions(["00000000000000aa", "00000000000000bb"]) == {
        "00000000000000aa": "r1"}
    assert shaping.revision_seq("00000000000000aa", "r2", "2025-01-01", now) == \
        shaping.revision_seq("00000000000000aa", "r2", "2025-01-01", now)

    # alerts and events ({out}): a shaped alert waits outside the outbox, then is routed
    record = {**alert(6), "article": {"id": "00000000000000cc"}}
    aid, new = store.claim_alert(story, watchlist, record["id"], record, now, shaped=True)
    assert new and store.alert(aid)["state"] == "shaping" and store.outbox_next() is None
    shaping.set_route(aid, "digest", now)
    assert store.alert(aid)["state"] == "digest"
    assert store.r.zscore(store.keys.expiry, aid) == pytest.approx(now + store.alert_ttl)
    event = {"id": "digest_1", "watchlist": watchlist, "type": "digest.created"}
    assert shaping.add_event(event, now) and not shaping.add_event(event, now)
    shaping.mark_digested([aid], event["id"])
    assert store.alert(aid)["digest"] == "digest_1"
    store.r.close()
