"""Loading settings from a TOML file, with environment variables on top.

Each process has one pydantic-settings class, built in ``main()`` and passed in;
this module only reads the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import tomllib
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from shared.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)


class EnvFirstSettings(BaseSettings):
    """Settings where an environment variable beats the file, which beats the default."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings


def load_settings(cls: type[S], path: Path | None, **overrides: Any) -> S:
    """Build ``cls`` from the TOML file at ``path`` (if any) plus ``overrides``.

    Relative paths in the file are the caller's business; errors name the file
    and the field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config {path} is not valid TOML: {e}") from e
    data.update(overrides)
    try:
        return cls(**data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise ConfigError(f"config {path or '(defaults)'}: {where}: {err.get('msg')}") from e
