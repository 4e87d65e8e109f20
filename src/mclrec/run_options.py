"""Settings written back as the `--set key=value` options `mclrec train` reads (config.parse_overrides' inverse)."""

from __future__ import annotations

import json
from typing import Any, Mapping

import yaml


def set_options(settings: Mapping[str, Any]) -> str:
    """`--set key=value ...` for these settings, each value as --set reads it (YAML; a plain string bare)."""
    return " ".join(f"--set {key}={_option_value(value)}" for key, value in settings.items())


def _option_value(value: Any) -> str:
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value, separators=(",", ":"))
