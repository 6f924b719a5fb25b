import time
from pathlib import Path

import pytest

from worker.config import ConfigWatcher, feed_name_from_url, load_config, parse_duration
from worker.errors import ConfigError

GOOD = """
feeds:
  - url: https://example.com/world.rss
    timezone: Asia/Karachi
webhooks:
  desk:
    url: https://hooks.example.com/newsmon
    secret: ${DESK_SECRET}
watchlists:
  - name: japan-energy
    webhook: desk
    entities:
      - Japan
      - name: LNG
        aliases: [liquefied natural gas]
        case_sensitive: true
    exclude: [Japan Airlines]
"""


def write(folder: Path, **files: str) -> Path:
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def problems(folder: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(folder, env={} if env is None else env)
    return str(exc.value)


def test_a_good_configuration_loads_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, a=GOOD), env={"DESK_SECRET": "whsec_abc"}).config
    feed = cfg.feeds[0]
    assert (feed.name, feed.every, feed.full_text) == ("example.com-world-rss", 300.0, "auto")
    assert cfg.webhooks["desk"].secret[0].get_secret_value() == "whsec_abc"
    wl = cfg.watchlists[0]
    assert wl.match == "any"
    assert [e.name for e in wl.entities] == ["Japan", "LNG"]
    assert wl.entities[1].terms == ["LNG", "liquefied natural gas"]


def test_files_in_the_folder_merge_into_one_document(tmp_path):
    write(tmp_path, feeds="feeds:\n  - url: https://a.example/rss\n",
          more="feeds:\n  - url: https://b.example/rss\n    every: 30s\n")
    cfg = load_config(tmp_path, env={}).config
    assert [(f.name, f.every) for f in cfg.feeds] == [("a.example-rss", 300.0),
                                                      ("b.example-rss", 30.0)]


def test_secrets_print_hidden(tmp_path):
    cfg = load_config(write(tmp_path, a=GOOD), env={"DESK_SECRET": "whsec_topsecret"}).config
    assert "whsec_topsecret" not in repr(cfg)
    assert "whsec_topsecret" not in str(cfg.model_dump())


def test_unknown_key_names_file_and_path(tmp_path):
    text = GOOD.replace("        case_sensitive: true", "        case_sensitive: true\n        colour: red")
    out = problems(write(tmp_path, a=text), {"DESK_SECRET": "x"})
    assert f"{tmp_path}/a.yaml: watchlists[0].entities[1].colour: Extra inputs" in out


def test_wrong_type_names_the_key_path(tmp_path):
    text = GOOD.replace("aliases: [liquefied natural gas]", "aliases: 3")
    out = problems(write(tmp_path, a=text), {"DESK_SECRET": "x"})
    assert "a.yaml: watchlists[0].entities[1].aliases: Input should be a valid list" in out


def test_undefined_webhook_name_is_an_error(tmp_path):
    out = problems(write(tmp_path, a=GOOD.replace("webhook: desk", "webhook: nope")),
                   {"DESK_SECRET": "x"})
    assert "watchlists[0].webhook: expected the name of a webhook" in out and "'nope'" in out


def test_duplicate_watchlist_names_are_an_error(tmp_path):
    write(tmp_path, a=GOOD, b="watchlists:\n  - name: japan-energy\n    entities: [X]\n")
    out = problems(tmp_path, {"DESK_SECRET": "x"})
    assert "b.yaml: watchlists[0].name: duplicate watchlist name 'japan-energy'" in out


def test_unset_environment_variable_is_an_error(tmp_path):
    out = problems(write(tmp_path, a=GOOD))
    assert "a.yaml: webhooks.desk.secret: environment variable DESK_SECRET is not set" in out


def test_variable_default_is_used_when_unset(tmp_path):
    cfg = load_config(write(tmp_path, a=GOOD.replace("${DESK_SECRET}", "${DESK_SECRET:-whsec_d}")),
                      env={}).config
    assert cfg.webhooks["desk"].secret[0].get_secret_value() == "whsec_d"


@pytest.mark.parametrize("every", ["5x", "-5m", "0s", "soon", "true"])
def test_bad_interval_is_an_error(tmp_path, every):
    out = problems(write(tmp_path, a=f"feeds:\n  - url: https://a.example/\n    every: {every}\n"))
    assert "a.yaml: feeds[0].every: expected" in out


@pytest.mark.parametrize("url", ["ftp://a.example/rss", "file:///etc/passwd", "example.com/rss"])
def test_url_that_is_not_http_is_an_error(tmp_path, url):
    out = problems(write(tmp_path, a=f"feeds:\n  - url: {url}\n"))
    assert "a.yaml: feeds[0].url: expected an http(s) URL" in out


def test_every_problem_is_reported_at_once(tmp_path):
    write(tmp_path, a="feeds:\n  - url: ftp://x\n    every: 5x\n")
    out = problems(tmp_path)
    assert "feeds[0].url" in out and "feeds[0].every" in out


def test_unknown_timezone_and_full_text_mode_are_errors(tmp_path):
    out = problems(write(tmp_path, a="feeds:\n  - url: https://a.example/\n    timezone: Mars/Olympus\n"
                         "    full_text: sometimes\n"))
    assert "feeds[0].timezone: expected an IANA time zone" in out
    assert "feeds[0].full_text" in out


def test_missing_folder_is_an_error(tmp_path):
    assert "configuration folder not found" in problems(tmp_path / "nope")


def test_durations():
    assert [parse_duration(v) for v in ("30s", "5m", "2h", 90, "1.5m")] == [30, 300, 7200, 90, 90]


def test_feed_names_derive_from_the_url():
    assert feed_name_from_url("https://www.example.com/world.rss") == "example.com-world-rss"
    assert feed_name_from_url("https://example.com/") == "example.com"


def test_watcher_keeps_the_last_good_configuration_on_a_bad_change(tmp_path):
    write(tmp_path, a="feeds:\n  - url: https://a.example/\n")
    watcher = ConfigWatcher(tmp_path, env={})
    assert [f.url for f in watcher.current().feeds] == ["https://a.example/"]
    write(tmp_path, a="feeds:\n  - url: ftp://broken\n      bad-indent: [\n")
    assert [f.url for f in watcher.current().feeds] == ["https://a.example/"]
    assert watcher.error is not None
    write(tmp_path, a="feeds:\n  - url: https://b.example/\n  - url: https://c.example/\n")
    assert [f.url for f in watcher.current().feeds] == ["https://b.example/", "https://c.example/"]
    assert watcher.error is None


def test_threads_asking_at_once_load_a_change_once(tmp_path, monkeypatch):
    import threading

    from worker import config as config_module

    (tmp_path / "feeds.yaml").write_text("feeds:\n  - url: https://a.example/\n")
    loads = []
    real = config_module.load_config

    def counted(*args, **kwargs):
        loads.append(1)
        time.sleep(0.2)  # a large folder: the other threads arrive while this one loads
        return real(*args, **kwargs)

    monkeypatch.setattr(config_module, "load_config", counted)
    watcher = ConfigWatcher(tmp_path, env={})
    got = []
    threads = [threading.Thread(target=lambda: got.append(watcher.current())) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len({id(c) for c in got}) == 1


@pytest.mark.parametrize("text", [
    "feeds:\n  - url: https://a.example/rss\n    every: 5\n",
    "feeds:\n  - url: https://a.example/rss\n    stale_after: 2.5\n",
    "failing_after: 600\n",
    "webhooks:\n  d:\n    url: https://h.example/\n    secret: whsec_eA==\n    retry: [5s, 60]\n",
])
def test_a_duration_without_a_unit_is_refused(tmp_path, text):
    out = problems(write(tmp_path, a=text))
    assert "expected a duration with a unit" in out and "a bare number would mean seconds" in out


def test_a_single_yaml_file_is_a_configuration(tmp_path):
    write(tmp_path, a=GOOD, b="this: [is not read\n")
    cfg = load_config(tmp_path / "a.yaml", env={"DESK_SECRET": "whsec_eA=="}).config
    assert [f.url for f in cfg.feeds] == ["https://example.com/world.rss"]


def test_a_missing_folder_is_named_with_where_it_was_looked_for_and_how_to_point_elsewhere(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = problems(Path("schedules"))
    assert out.startswith("schedules: configuration folder not found")
    assert str(tmp_path / "schedules") in out and "--config" in out and "NEWSMON_CONFIG" in out


def test_a_watcher_follows_a_single_file(tmp_path):
    file = tmp_path / "one.yaml"
    file.write_text("feeds:\n  - url: https://a.example/rss\n")
    watcher = ConfigWatcher(file, env={})
    assert len(watcher.current().feeds) == 1
    file.write_text("feeds:\n  - url: https://a.example/rss\n  - url: https://b.example/rss\n")
    assert len(watcher.current().feeds) == 2
