"""Load a pydantic-settings model from a TOML file, with clear errors for a wrong config."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


class ConfigError(Exception):
    """A config file is missing, unreadable, not TOML, or does not fit the model."""


def load_settings(cls: type[S], path: Path | None, **overrides: object) -> S:
    """Values from the file win over the environment; ``overrides`` win over both.

    Unknown keys are refused (the models use ``extra="forbid"``): a typo in a config file
    is an error at start, not a silently ignored setting.
    """
    data: dict[str, object] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    data.update(overrides)
    try:
        return cls(**data)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {problems}") from exc
