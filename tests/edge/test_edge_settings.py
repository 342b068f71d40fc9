"""Edge settings: defaults, environment over file, and the production checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.settings import BUNDLED_BASELINE, EdgeSettings
from shared.config import load_settings
from shared.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_defaults_are_usable(tmp_path: Path) -> None:
    s = load_settings(EdgeSettings, write(tmp_path, f'public_key = "{tmp_path / "k.pub"}"\n'))
    assert (s.http_host, s.http_port, s.keep_versions, s.recent_inputs) == (
        "127.0.0.1",
        8700,
        5,
        4096,
    )
    assert s.baseline_model == BUNDLED_BASELINE and BUNDLED_BASELINE.exists()
    assert s.mode == "development" and s.runtime is None and s.status_ttl_s > s.status_interval_s


def test_the_environment_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'public_key = "/k.pub"\nfleet = "from-file"\nhttp_port = 9000\n')
    monkeypatch.setenv("EDGELOOP_EDGE_FLEET", "from-env")
    s = load_settings(EdgeSettings, path)
    assert (s.fleet, s.http_port) == ("from-env", 9000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('device_id = "no spaces"', "device_id"),
        (
            "status_interval_s = 10\nstatus_ttl_s = 10",
            "status_ttl_s: Value error, must exceed status_interval_s",
        ),
        ('runtime = "onnx"', "runtime"),
        ("unknown_field = 1", "unknown_field"),
        (
            'mode = "production"\nstate_dir = "relative"',
            "state_dir: Value error, relative must be an absolute path",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_field_named(
    tmp_path: Path, text: str, message: str
) -> None:
    key = tmp_path / "k.pub"
    key.write_text("not checked here")
    with pytest.raises(ConfigError, match=message):
        load_settings(EdgeSettings, write(tmp_path, f'public_key = "{key}"\n{text}\n'))


def test_production_refuses_a_writable_trust_anchor(tmp_path: Path) -> None:
    key = tmp_path / "k.pub"
    key.write_text("pem")
    key.chmod(0o666)
    text = f'public_key = "{key}"\nmode = "production"\nstate_dir = "{tmp_path / "state"}"\n'
    with pytest.raises(ConfigError, match="writable"):
        load_settings(EdgeSettings, write(tmp_path, text))
    key.chmod(0o644)
    assert load_settings(EdgeSettings, write(tmp_path, text)).mode == "production"


def test_models_default_to_the_one_model_and_name_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f'public_key = "{tmp_path / "k.pub"}"\n'
    one = load_settings(EdgeSettings, write(tmp_path, key + 'model = "vibration"\n'))
    assert (one.model, one.models) == ("vibration", ["vibration"])
    two = load_settings(EdgeSettings, write(tmp_path, key + 'models = ["digits", "bearing"]\n'))
    assert (two.model, two.models) == ("digits", ["digits", "bearing"])
    monkeypatch.setenv("EDGELOOP_EDGE_MODELS", '["images", "digits"]')
    assert load_settings(EdgeSettings, write(tmp_path, key)).model == "images"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('models = ["a", "b"]\nmodel = "b"\n', "not the first of models"),
        ('models = ["a", "a"]\n', "twice"),
        ('models = ["digits", "spool"]\n', "taken by the edge's own state"),
        ('models = ["digits", "no spaces"]\n', "models"),
    ],
)
def test_bad_models_are_refused_naming_the_setting(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, f'public_key = "{tmp_path / "k.pub"}"\n' + text)
    with pytest.raises(ConfigError, match=message):
        load_settings(EdgeSettings, path)


def test_the_uplink_follows_update_source_unless_set(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_bytes(b"")  # production checks the trust anchor's mode
    (tmp_path / "k.pub").chmod(0o644)
    key = f'public_key = "{tmp_path / "k.pub"}"\nstate_dir = "{tmp_path / "state"}"\n'
    assert load_settings(EdgeSettings, write(tmp_path, key)).uplink == "redis"
    api = 'api_url = "http://127.0.0.1:8000"\napi_token = "elt_x"\n'
    s = load_settings(EdgeSettings, write(tmp_path, key + api + 'uplink = "http"\n'))
    assert (s.update_source, s.uplink) == ("redis", "http")
    with pytest.raises(ConfigError, match="uplink = http needs api_url and api_token"):
        load_settings(EdgeSettings, write(tmp_path, key + 'uplink = "http"\n'))
    with pytest.raises(ConfigError, match="plain"):
        load_settings(
            EdgeSettings,
            write(
                tmp_path,
                key + 'mode = "production"\nuplink = "http"\napi_token = "elt_x"\n'
                'api_url = "http://cloud.example:8000"\n',
            ),
        )
