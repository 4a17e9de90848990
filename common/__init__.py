"""Small helpers the CPython packages share: settings files, logging, process utilities."""

from common.settings import ConfigError, load_settings

__all__ = ["ConfigError", "load_settings"]
