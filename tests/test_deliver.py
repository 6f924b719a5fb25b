"""The pure core of worker/deliver.py: signatures, payloads, the retry decision, redaction.
No Redis, no network."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import jsonschema
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.deliveries import BODY, SCHEMA, SECRET, SECRET_2, article
from worker.config import WatchlistConfig, WebhookConfig
from worker.deliver import (
    DEFAULT_SCHEDULE,
    RETRY_AFTER_CAP,
    alert_payload,
    destinations,
    encode_body,
    failure_reason,
    next_attempt,
    notification_text,
    notify_dest,
    notify_secrets,
    ping_payload,
    sign,
    signing_key,
    webhook_digest,
    webhook_headers,
)
from worker.dump import dump_of, render_dump
from worker.errors import PermanentDeliveryError, TransientDeliveryError
from worker.models import Match, WatchlistHit
from worker.pipeline import alert_json
from worker.redact import redact, url_secrets

NOW = 1_700_000_000.0


def record() -> dict:
    art = article()
    hit = WatchlistHit("energy", ("LNG",), (
        Match("LNG", "LNG", "title", 6, 9, "Japan LNG imports rise"),
        Match("LNG", "liquefied natural gas", "body", 25, 46, BODY)))
    return alert_json(hit, art, art.id, render_dump(dump_of(art)), NOW)


# -- signing -------------------------------------------------------------------------------------
def test_the_known_answer_vector_of_the_specification():
    signature = sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}',
                     [signing_key(SECRET)])
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_reference_library_verifies_our_headers():
    body = encode_body(alert_payload(record(), copies=2))
    now = int(datetime.now(UTC).timestamp())
    headers = webhook_headers("alert_1", now, body, [signing_key(SECRET)])
    assert Webhook(SECRET).verify(body, headers)["data"]["article"]["copies"] == 2
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("newsmon/")


def test_two_secrets_give_two_signatures_and_either_verifies():
    body = b'{"type":"ping"}'
    now = int(datetime.now(UTC).timestamp())
    headers = webhook_headers("ping_1", now, body, [signing_key(SECRET), signing_key(SECRET_2)])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, SECRET_2):
        Webhook(secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUFBQUFBQUFBQUFBQUFBQQ==").verify(body, headers)


def test_a_secret_without_its_prefix_or_padding_is_the_same_key():
    assert signing_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == signing_key(SECRET)
    assert signing_key("whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24") == signing_key(SECRET_2)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", ""])
def test_a_secret_that_is_not_base64_is_refused_without_showing_it(secret):
    with pytest.raises(PermanentDeliveryError) as caught:
        signing_key(secret)
    assert "not base64" in str(caught.value)
    assert "base64!" not in str(caught.value)


# -- payload -----------------------------------------------------------------------------------
def test_the_payload_carries_the_alert_and_its_article_and_fits_the_schema():
    alert = record()
    payload = alert_payload(alert, copies=3)
    jsonschema.validate(payload, SCHEMA)
    data = payload["data"]
    assert payload["type"] == "alert.created" and payload["timestamp"] == alert["created"]
    assert data["id"] == alert["id"] and data["watchlist"] == "energy"
    assert data["entities"] == ["LNG"]
    assert data["matches"][1] == {"entity": "LNG", "term": "liquefied natural gas",
                                  "field": "body", "snippet": BODY}
    art = data["article"]
    assert art["published"] == "2025-02-06T20:30:00+09:00"
    assert art["canonical_url"] == "https://news.example/story/1"
    assert art["url"].endswith("?utm_source=feed")
    assert (art["story"], art["copies"]) == (alert["story"], 3)
    assert art["dump"] == alert["article"]["dump"] and BODY in art["dump"]


def test_the_ping_fits_the_schema_and_the_schema_refuses_a_broken_payload():
    jsonschema.validate(ping_payload("desk", NOW), SCHEMA)
    broken = alert_payload(record(), copies=1)
    del broken["data"]["article"]["story"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_the_body_is_compact_utf8_json():
    assert encode_body({"title": "Tōkyō"}) == '{"title":"Tōkyō"}'.encode()


# -- the retry decision --------------------------------------------------------------------------
def decide(attempt_no=1, status=None, error=None, retry_after=None, schedule=DEFAULT_SCHEDULE,
           seed=1):
    return next_attempt(attempt_no, status, error, retry_after, schedule, NOW,
                        random.Random(seed))


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status):
    assert decide(status=status) == ("delivered", None)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 408, 429])
def test_5xx_408_and_429_are_retried_on_the_schedule(status):
    state, when = decide(status=status)
    assert state == "retrying" and 4.0 <= when - NOW <= 6.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 413, 422, 301, 302, 307])
def test_other_4xx_and_3xx_are_dead_at_once(status):
    assert decide(status=status) == ("dead", None)


def test_timeouts_and_connection_errors_are_retried_refused_addresses_are_not():
    assert decide(error=TransientDeliveryError("no complete response within 15 s"))[0] == \
        "retrying"
    assert decide(error=PermanentDeliveryError("refused address 10.0.0.1 (private)")) == \
        ("dead", None)


def test_each_wait_is_the_schedule_plus_or_minus_20_percent_then_dead():
    expected = [5, 300, 1800, 7200, 18000, 36000, 36000]
    for attempt_no, base in enumerate(expected, start=1):
        waits = [decide(attempt_no, 503, seed=s)[1] - NOW for s in range(200)]
        assert base * 0.8 <= min(waits) and max(waits) <= base * 1.2
        assert max(waits) - min(waits) > base * 0.3  # actually spread
    assert decide(8, 503) == ("dead", None)


def test_a_short_schedule_from_the_configuration():
    schedule = WebhookConfig(url="https://h.example/", secret=SECRET,
                             retry=["1s", "2s", "5s"]).retry
    assert schedule == [1.0, 2.0, 5.0]
    assert 0.8 <= decide(1, 500, schedule=schedule)[1] - NOW <= 1.2
    assert 4.0 <= decide(3, 500, schedule=schedule)[1] - NOW <= 6.0
    assert decide(4, 500, schedule=schedule) == ("dead", None)


def test_retry_after_is_a_minimum_wait_capped_at_one_day():
    assert decide(1, 429, retry_after=120)[1] == NOW + 120
    assert 4.0 <= decide(1, 429, retry_after=1)[1] - NOW <= 6.0
    assert decide(1, 503, retry_after=7 * 86400)[1] == NOW + RETRY_AFTER_CAP
    assert decide(8, 429, retry_after=10) == ("dead", None)


def test_failure_reasons_say_what_to_do():
    assert "configure the final URL" in failure_reason(302, None)
    assert "disabled until its configuration changes" in failure_reason(410, None)
    assert failure_reason(500, None) == "HTTP 500"
    assert failure_reason(None, TransientDeliveryError("connect failed")) == "connect failed"
    assert failure_reason(204, None) == ""


# -- destinations and secrets --------------------------------------------------------------------
def test_destinations_name_the_webhook_and_hide_notification_urls():
    wl = WatchlistConfig(name="desk", entities=["LNG"], webhook="ops",
                         notify=["slack://TokenA/TokenB/TokenC", "json://127.0.0.1:9/x"])
    dests = destinations(wl)
    assert dests[0] == "webhook:ops"
    assert dests[1].startswith("notify:slack:") and "Token" not in dests[1]
    assert dests[2].startswith("notify:json:") and dests[1] != dests[2]
    assert notify_dest("slack://TokenA/TokenB/TokenC") == dests[1]
    assert destinations(WatchlistConfig(name="quiet", entities=["LNG"])) == []
    assert destinations(None) == []


def test_a_webhook_digest_changes_with_any_part_of_its_configuration():
    base = WebhookConfig(url="https://h.example/hook", secret=SECRET)
    assert webhook_digest(base) == webhook_digest(WebhookConfig(url="https://h.example/hook",
                                                                secret=[SECRET]))
    for other in (WebhookConfig(url="https://h.example/hook2", secret=SECRET),
                  WebhookConfig(url="https://h.example/hook", secret=[SECRET, SECRET_2]),
                  WebhookConfig(url="https://h.example/hook", secret=SECRET, retry=["1s"])):
        assert webhook_digest(other) != webhook_digest(base)


def test_url_credentials_are_redacted():
    url = "https://bob:pa55word@hooks.example/services/T0KEN1/B0KEN2?token=abc123secret"
    text = f"failed: {url} (user bob:pa55word, token abc123secret, path /services/T0KEN1)"
    clean = redact(text, url_secrets(url))
    for secret in ("pa55word", "abc123secret", "T0KEN1", "B0KEN2"):
        assert secret not in clean
    assert "slackTokenA" not in redact("to slackTokenA", notify_secrets("slack://slackTokenA/b/c"))


def test_plain_words_in_a_url_path_are_not_taken_for_tokens():
    secrets = url_secrets("https://hooks.example/services/newsmon/T0KEN1abc")
    assert "T0KEN1abc" in secrets
    assert "services" not in secrets and "newsmon" not in secrets
    reason = "HTTP 410 Gone: webhook disabled until its configuration changes"
    assert redact(reason, url_secrets("https://h.example/webhook/newsmon")) == reason


def test_the_notification_text_is_short_and_readable():
    title, body = notification_text(record())
    assert title == "[energy] Japan LNG imports rise"
    assert body.splitlines()[0] == "Entities: LNG"
    assert "Japan LNG imports rise" in body and body.endswith("?utm_source=feed")
