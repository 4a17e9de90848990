"""Settings files: load a pydantic-settings model from TOML with clear errors for a wrong
config, and write TOML (tomli-w) for the configs the tools and rigs generate."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import tomli_w
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


def deep_merge(base: Mapping[str, object], extra: Mapping[str, object]) -> dict[str, object]:
    """``base`` with ``extra`` laid over it; nested tables merge key by key."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = deep_merge(old, value)
        else:
            out[key] = value
    return out


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dump_toml(data: Mapping[str, object]) -> str:
    """A config as TOML text: paths become strings, keys whose value is None are left out
    (TOML has no null; the model's default then applies)."""
    return tomli_w.dumps({str(k): _plain(v) for k, v in data.items() if v is not None})
