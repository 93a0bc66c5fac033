"""Settings from flags, environment and secret files: flag beats variable beats default (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentserver.errors import ConfigError
from agentserver.settings.option import Option
from agentserver.settings.options import OPTION_BY_NAME, OPTIONS, Settings

MAX_SECRET_FILE = 64 << 10


def _pick(
    option: Option, values: Mapping[str, str | None], environ: Mapping[str, str]
) -> str | None:
    """Flag beats environment beats default; an empty environment value counts as unset.

    A secret can also come from a file named by `<VARIABLE>_FILE` (Docker's convention), so
    it need not be on the command line (any local user reads /proc/PID/cmdline) or in the
    environment of every process the server starts.
    """
    given = values.get(option.name)
    if given is not None:
        return given
    env = environ.get(option.env)
    file = environ.get(f"{option.env}_FILE") if option.secret else None
    if env not in (None, "") and file:
        raise ConfigError(
            f"{option.env} and {option.env}_FILE are both set: keep one", field=option.name
        )
    if env not in (None, ""):
        return env
    if file:
        return read_secret_file(option, file)
    return option.default


def read_secret_file(option: Option, path: str) -> str:
    """The secret in the file `<VARIABLE>_FILE` names, without its trailing newline."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_SECRET_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{option.env}_FILE: cannot read {path}: {reason}", field=option.name
        ) from None
    if len(text) > MAX_SECRET_FILE:
        raise ConfigError(
            f"{option.env}_FILE: {path} is larger than {MAX_SECRET_FILE} bytes", field=option.name
        )
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"{option.env}_FILE: {path} is empty", field=option.name)
    return secret


def secrets_on_command_line(values: Mapping[str, str | None]) -> list[str]:
    """The flags of secret options given on the command line (readable by any local user)."""
    return [o.flag for o in OPTIONS if o.secret and values.get(o.name) is not None]


def _where(option: Option, values: Mapping[str, str | None]) -> str:
    """The flag, and the variable too unless the flag was given: where a bad value came from."""
    return option.flag if values.get(option.name) is not None else f"{option.flag} / {option.env}"


def build_settings(values: Mapping[str, str | None], environ: Mapping[str, str]) -> Settings:
    """Validate raw option text into Settings; a bad value raises ConfigError naming its option."""
    texts = {o.name: _pick(o, values, environ) for o in OPTIONS}
    fields: dict[str, Any] = {}
    for name, text in texts.items():
        option = OPTION_BY_NAME[name]
        try:
            value = option.value(text, environ)
        except ValueError as exc:
            raise ConfigError(f"{_where(option, values)}: {exc}", field=name) from None
        fields.update(option.assign(value))
    return Settings(**fields, secret_flags=tuple(secrets_on_command_line(values)))
