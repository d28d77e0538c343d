"""Strict, layered configuration: schema + loader."""

from harmonica.config.load import ConfigError, config_hash, find_root, flatten, load_config, to_yaml
from harmonica.config.schema import HarmonicaConfig

__all__ = ["ConfigError", "HarmonicaConfig", "config_hash", "find_root", "flatten", "load_config", "to_yaml"]
