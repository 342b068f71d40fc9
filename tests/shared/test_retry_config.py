"""The retry helper and the settings loader."""

from __future__ import annotations

import threading

import pytest
from pydantic import Field

from shared.config import EnvFirstSettings, load_settings
from shared.errors import ConfigError
from shared.retry import Backoff


class AuthError(Exception):
    pass


def test_gives_up_at_once_on_give_up_errors():
    calls = []
    gave_up = []

    def fn():
        calls.append(1)
        raise AuthError("bad token")

    with pytest.raises(AuthError):
        Backoff(base=0, on_giveup=lambda n, e: gave_up.append(n)).call(
            fn, retry_on=(Exception,), give_up_on=(AuthError,)
        )
    assert len(calls) == 1 and gave_up == [1]


def test_retries_until_max_tries_then_raises():
    backoffs = []

    def fn():
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        Backoff(base=0, max_tries=4, on_backoff=lambda n, w, e: backoffs.append(n)).call(
            fn, retry_on=(ConnectionError,)
        )
    assert backoffs == [1, 2, 3]


def test_stop_event_ends_the_wait():
    stop = threading.Event()
    stop.set()
    with pytest.raises(ConnectionError):
        Backoff(base=10, cap=10).call(
            lambda: (_ for _ in ()).throw(ConnectionError()), retry_on=(ConnectionError,), stop=stop
        )


def test_delay_is_capped():
    b = Backoff(base=1, cap=3)
    assert all(0 <= b.delay(n) <= 3 for n in range(20))


class DemoSettings(EnvFirstSettings, env_prefix="EDGELOOP_TEST_"):
    name: str = "default"
    port: int = Field(8000, gt=0)


def test_settings_file_then_env(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('name = "from-file"\nport = 9000\n')
    s = load_settings(DemoSettings, path)
    assert (s.name, s.port) == ("from-file", 9000)
    monkeypatch.setenv("EDGELOOP_TEST_PORT", "9100")
    assert load_settings(DemoSettings, path).port == 9100


def test_settings_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("port = -1\n")
    with pytest.raises(ConfigError, match=r"c.toml: port"):
        load_settings(DemoSettings, path)
    path.write_text("port = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(DemoSettings, path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(DemoSettings, tmp_path / "missing.toml")
