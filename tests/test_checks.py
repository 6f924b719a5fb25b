"""What check refuses although the configuration loads: it could never work."""

from __future__ import annotations

import base64

import pytest

from worker.checks import config_problems, referenced_variables, secret_problem
from worker.config import Config


def _secret(n: int) -> str:
    return "whsec_" + base64.b64encode(bytes(range(n))).decode()


@pytest.mark.parametrize(("secret", "says"), [
    ("not-a-whsec", "expected whsec_ followed by base64"),
    ("whsec_not base64!", "is not base64"),
    ("whsec_", "the key is 0 bytes"),
    (_secret(16), "the key is 16 bytes"),
    (_secret(65), "the key is 65 bytes"),
])
def test_a_secret_no_receiver_can_verify_is_refused(secret, says):
    assert says in (secret_problem(secret) or "")


@pytest.mark.parametrize("n", [24, 32, 64])
def test_a_standard_webhooks_secret_passes(n):
    assert secret_problem(_secret(n)) is None
    assert secret_problem(_secret(n).rstrip("=")) is None  # as the signer, padding optional


def test_no_feeds_a_bad_secret_and_a_typo_are_each_one_problem():
    config = Config.model_validate({
        "webhooks": {"desk": {"url": "https://h.example/x", "secret": ["whsec_eA==",
                                                                      _secret(32)]}}})
    problems = config_problems(config, {"NEWSMON_TICK_SECONDS": "1", "NEWSMON_TICKS": "1"})
    assert [p.split(":")[0] for p in problems] == ["feeds", "webhooks.desk.secret[0]",
                                                  "environment"]
    assert "NEWSMON_TICKS" in problems[2] and "typo" in problems[2]
    good = Config.model_validate({"feeds": [{"url": "https://a.example/rss"}]})
    assert config_problems(good, {"NEWSMON_TICK_SECONDS": "1"}) == []


def test_variables_the_configuration_refers_to_are_found(tmp_path):
    file = tmp_path / "a.yaml"
    file.write_text("webhooks:\n  d:\n    secret: ${NEWSMON_DESK_SECRET}\n    url: ${HOOK:-x}\n")
    assert referenced_variables([str(file)]) == {"NEWSMON_DESK_SECRET", "HOOK"}
