"""Server settings: one frozen dataclass built from flags and environment, validated (pure).

Each option is declared once, on its Settings field (`options.py`); the flags, `--help`, the
README table and the parser are all made from those declarations.
"""

from __future__ import annotations

from agentserver.settings.option import Option, options_table
from agentserver.settings.options import OPTION_BY_NAME, OPTIONS, Settings
from agentserver.settings.parse import (
    MAX_SECRET_FILE,
    build_settings,
    read_secret_file,
    secrets_on_command_line,
)
from agentserver.settings.values import (
    BACKENDS,
    IPNetwork,
    default_data_dir,
    parse_bool,
    parse_duration,
    parse_list,
    parse_listen,
    parse_networks,
    parse_size,
    positive_duration,
)

__all__ = [
    "BACKENDS",
    "MAX_SECRET_FILE",
    "OPTIONS",
    "OPTION_BY_NAME",
    "IPNetwork",
    "Option",
    "Settings",
    "build_settings",
    "default_data_dir",
    "markdown_table",
    "parse_bool",
    "parse_duration",
    "parse_list",
    "parse_listen",
    "parse_networks",
    "parse_size",
    "positive_duration",
    "read_secret_file",
    "secrets_on_command_line",
]


def markdown_table() -> str:
    """The configuration table README.md shows (a test keeps the two identical)."""
    return options_table(OPTIONS)
