"""One `serve` option, declared once on its Settings field: flag, variable, default, help, parse."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from agentserver.settings import values

T = TypeVar("T")
_OPTION = "agentserver.option"  # the key of a field's Option in its metadata


@dataclass(frozen=True, slots=True)
class Option:
    """One `serve` option: its flag, environment variable, default (as text) and help, and how
    its text becomes the value of the Settings field(s) it sets."""

    name: str
    env: str
    default: str | None
    help: str
    secret: bool = False
    # Text (after flag, environment, file and default were consulted) → value; ValueError if bad.
    parse: Callable[[str | None], object] = values.text
    # An empty flag (`--agent-image ''`) means the default, as an empty variable always does.
    blank_is_default: bool = False
    # The value when the text is empty or missing, where it depends on the environment.
    unset: Callable[[Mapping[str, str]], object] | None = None
    # The Settings fields the value fills: this option's own, or those of a tuple it parses to.
    fields: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def value(self, text: str | None, environ: Mapping[str, str]) -> object:
        """The value of this option's text; ValueError says what is wrong with it."""
        if self.blank_is_default and not text:
            text = self.default
        if self.unset is not None and not text:
            return self.unset(environ)
        return self.parse(text)

    def assign(self, value: object) -> dict[str, object]:
        """The Settings fields and their values for this option's value."""
        if len(self.fields) == 1:
            return {self.fields[0]: value}
        assert isinstance(value, tuple), self.name
        return dict(zip(self.fields, value, strict=True))


def setting(
    env: str,
    default: str | None,
    parse: Callable[[str | None], T],
    help: str,
    *,
    secret: bool = False,
    blank_is_default: bool = False,
    unset: Callable[[Mapping[str, str]], T] | None = None,
    field_default: T | None = None,
) -> T:
    """A Settings field that is a `serve` option; its flag is made from the field's name.

    The field's default is its default text parsed (or `field_default` where the value without
    text depends on the environment); a secret never shows in Settings' repr.
    """
    option = Option("", env, default, help, secret, parse, blank_is_default, unset)
    initial = parse(default) if field_default is None else field_default
    return field(default=initial, repr=not secret, metadata={_OPTION: option})


def declared_options(settings_class: type[Any]) -> Iterable[Option]:
    """The options declared on a dataclass's fields with `setting`, in field order."""
    for declared in fields(settings_class):
        option: Option | None = declared.metadata.get(_OPTION)
        if option is not None:
            yield replace(option, name=declared.name, fields=(declared.name,))


def options_table(options: Iterable[Option]) -> str:
    """The configuration table README.md shows, one row per option."""
    rows = ["| Flag | Environment variable | Default | What it does |", "|---|---|---|---|"]
    for option in options:
        flag = option.flag
        if option.default in ("true", "false"):
            flag = f"{option.flag} / --no-{option.flag[2:]}"
        default = f"`{option.default}`" if option.default is not None else "—"
        help_text = option.help.replace("|", "\\|")
        rows.append(f"| `{flag}` | `{option.env}` | {default} | {help_text} |")
    return "\n".join(rows) + "\n"
