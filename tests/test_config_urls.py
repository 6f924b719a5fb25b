"""URLs in the configuration are validated fully (scheme, host, port, no spaces or control
characters), errors never echo their credentials, and ``newsmon check`` refuses notification
schemes newsmon cannot send through its address guard, naming the watchlist and the scheme."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from worker.cli import main
from worker.config import load_config
from worker.errors import ConfigError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def write(folder, feeds=("https://feeds.example/rss",), hook_url="https://hooks.example/h", notify=()):
    folder.mkdir(exist_ok=True)
    doc = {"feeds": [{"url": u} for u in feeds],
           "webhooks": {"ops": {"url": hook_url, "secret": SECRET}},
           "watchlists": [{"name": "energy", "webhook": "ops", "notify": list(notify),
                           "entities": ["LNG"]}]}
    (folder / "c.yaml").write_text(yaml.safe_dump(doc))
    return folder


def problems(folder) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(folder, env={})
    return str(caught.value)


@pytest.mark.parametrize(("url", "message"), [
    ("https://hooks.example:99999/h", "webhooks.ops.url: port '99999' is not a port number"),
    ("https://hooks.example:0/h", "port 0 is not a port number"),
    ("https://hooks.example:http/h", "is not a port number"),
    ("https://hooks example/h", "may not contain spaces or control characters"),
    ("https://hooks.example/h\n", None),  # stripped: YAML's trailing newline is no character
    ("https://hooks.example/\x07h", "control characters"),
    ("https://-hooks.example/h", "is not a valid host name"),
    ("https://hooks..example/h", "is not a valid host name"),
    ("https://[::1/h", "IPv6 address must be written"),
    ("https://[::1]x/h", "IPv6 address must be written"),
    ("gopher://hooks.example/h", "expected an http(s) URL, got scheme 'gopher'"),
    ("https:///h", "the URL has no host"),
])
def test_a_webhook_url_is_validated(tmp_path, url, message):
    folder = write(tmp_path / "c", hook_url=url)
    if message is None:
        load_config(folder, env={})
        return
    assert message in problems(folder)


@pytest.mark.parametrize("url", ["https://[2001:db8::1]:8443/rss", "https://bücher.example/rss",
                                 "http://user:pw@feeds.example:8080/rss?apikey=x",
                                 "https://feeds.example./rss", "http://10.0.0.1/rss"])
def test_valid_feed_urls_pass(tmp_path, url):
    assert load_config(write(tmp_path / "c", feeds=[url]), env={}).config.feeds[0].url == url


def test_a_url_error_never_echoes_the_credentials(tmp_path):
    out = problems(write(tmp_path / "c", feeds=["http://bob:hunter2pw@feeds.example:123456/rss"
                                                "?token=tok3nvalue"]))
    assert "feeds[0].url" in out and "hunter2pw" not in out and "tok3nvalue" not in out


@pytest.mark.parametrize("url", ["not a url", "ntfy://host/topic with space", "://x", "ntfy:/x"])
def test_a_notification_url_needs_a_scheme_and_no_spaces(tmp_path, url):
    assert "watchlists[0].notify[0]: expected an Apprise URL" in problems(
        write(tmp_path / "c", notify=[url]))


def check(folder):
    return CliRunner().invoke(main, ["check", "--config", str(folder)], env={})


def test_check_refuses_a_port_out_of_range_without_crashing(tmp_path):
    result = check(write(tmp_path / "c", hook_url="https://hooks.example:99999/h"))
    assert result.exit_code == 1 and "not a port number" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("url", "reason"), [
    ("dbus://", "scheme dbus:// is not supported"),
    ("syslog://", "scheme syslog:// is not supported"),
    ("nosuch://host/x", "scheme nosuch:// is not a usable Apprise URL"),
])
def test_check_refuses_notification_schemes_naming_the_watchlist_and_scheme(tmp_path, url, reason):
    result = check(write(tmp_path / "c", notify=["ntfy://ntfy.example/topic", url]))
    assert result.exit_code == 1
    assert f"watchlists[0].notify[1] (watchlist 'energy'): {reason}" in result.output


def test_check_shows_notification_urls_without_their_tokens(tmp_path):
    token = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    result = check(write(tmp_path / "c", notify=[f"tgram://{token}/123456789",
                                                 "ntfys://ntfy.example/s3cr3tTopic99"]))
    assert result.exit_code == 0, result.output
    assert "notify tgram://*** ntfys://***" in result.output
    assert token not in result.output and "AAHdqTcv" not in result.output
    assert "s3cr3tTopic99" not in result.output
