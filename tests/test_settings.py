"""Settings from the environment: every bad value is refused naming the variable."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.settings import KNOWN_VARIABLES, Settings, default_data_dir, unknown_variables


@pytest.mark.parametrize(("name", "value", "says"), [
    ("NEWSMON_ALLOW_NETWORKS", "localhost", "expected comma-separated CIDR networks"),
    ("NEWSMON_ALLOW_NETWORKS", "127.0.0.0/8, 10.0.0.0/33", "'10.0.0.0/33'"),
    ("NEWSMON_ALLOW_NETWORKS", "10.1.2.3/8", "did you mean 10.0.0.0/8?"),
    ("NEWSMON_TICK_SECONDS", "soon", "expected a number"),
    ("NEWSMON_TICK_SECONDS", "-1", "expected a positive number"),
    ("NEWSMON_RETENTION_DAYS", "inf", "expected a positive number"),
    ("NEWSMON_METRICS_PORT", "99999", "expected a port number"),
    ("NEWSMON_METRICS_PORT", "http", "expected a port number"),
    ("NEWSMON_LOG_FORMAT", "xml", "expected one of text, json"),
    ("NEWSMON_LOG_LEVEL", "loud", "expected one of debug, info, warning, error"),
    ("REDIS_URL", "localhost:6380", "expected a URL such as redis://host:port/0"),
])
def test_a_bad_value_is_refused_naming_the_variable(name, value, says):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    [problem] = caught.value.problems
    assert problem.startswith(f"environment: {name}: ") and says in problem


def test_good_values_are_read():
    s = Settings.from_env({"NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8, ::1, 10.20.0.0/16",
                           "NEWSMON_LOG_LEVEL": "DEBUG", "NEWSMON_METRICS_PORT": "9100"})
    assert s.allow_networks == ("127.0.0.0/8", "::1", "10.20.0.0/16")
    assert (s.log_level, s.metrics_port, s.config_given) == ("debug", 9100, False)


def test_the_data_folder_is_per_user_whatever_the_current_folder():
    assert default_data_dir({"XDG_STATE_HOME": "/srv/state", "HOME": "/home/a"}) == \
        Path("/srv/state/newsmon")
    assert default_data_dir({"HOME": "/home/a"}) == Path("/home/a/.local/state/newsmon")
    # The XDG spec ignores a relative XDG_STATE_HOME.
    assert default_data_dir({"XDG_STATE_HOME": "state", "HOME": "/home/a"}) == \
        Path("/home/a/.local/state/newsmon")
    assert Settings.from_env({"HOME": "/home/a"}).data_dir == Path("/home/a/.local/state/newsmon")
    assert Settings.from_env({"NEWSMON_DATA_DIR": "/d"}).data_dir == Path("/d")


def test_unknown_newsmon_variables_are_typos_unless_the_configuration_uses_them():
    env = {"NEWSMON_CONFG": "x", "NEWSMON_DESK_SECRET": "whsec_x", "NEWSMON_CONFIG": "x",
           "HOME": "/"}
    assert unknown_variables(env) == ["NEWSMON_CONFG", "NEWSMON_DESK_SECRET"]
    assert unknown_variables(env, frozenset({"NEWSMON_DESK_SECRET"})) == ["NEWSMON_CONFG"]
    assert "NEWSMON_LOG_LEVEL" in KNOWN_VARIABLES


def test_every_newsmon_variable_the_code_reads_is_known():
    """check flags unknown NEWSMON_ variables: a new setting must join KNOWN_VARIABLES."""
    names = {node.value for path in (Path(__file__).parents[1] / "worker").rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and re.fullmatch(r"NEWSMON_[A-Z0-9_]+", node.value)}
    assert names - set(KNOWN_VARIABLES) == set()
