"""One declaration per option: the README table, `serve --help` and the parser all agree on it."""

from __future__ import annotations

import dataclasses
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from agentserver.cli import app, settings_from
from agentserver.settings import OPTIONS, Option, Settings, build_settings, markdown_table

# Texts tried in turn: each option's sample is the first that parses to a non-default value.
CANDIDATES = (
    "7",
    "90s",
    "3MiB",
    "docker",
    "https",
    "json",
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",  # a Fernet key
    "10.9.8.7:4321",
    "203.0.113.0/24",
    "https://upstream.example/base",
    "false",
    "true",
    "tier=web",
)
HOME = {"HOME": "/home/settings-test"}


def differing_fields(a: Settings, b: Settings) -> set[str]:
    """The names of the fields (other than the secret-flag list) whose values differ."""
    return {
        f.name
        for f in dataclasses.fields(Settings)
        if f.name != "secret_flags" and getattr(a, f.name) != getattr(b, f.name)
    }


def sample(option: Option) -> str:
    """A text this option accepts whose value is not the default's."""
    default = option.value(option.default, HOME)
    for text in CANDIDATES:
        try:
            value = option.value(text, HOME)
        except ValueError:
            continue
        if value != default:
            return text
    raise AssertionError(f"no candidate text changes {option.name}: add one to CANDIDATES")


def cli_tokens(option: Option, text: str) -> list[str]:
    """The command-line words giving `option` the value `text`: a boolean is a bare flag."""
    if option.default in ("true", "false"):
        value = option.value(text, HOME)
        return [option.flag if value else f"--no-{option.flag[2:]}"]
    return [option.flag, text]


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No option variable (nor its _FILE) from the caller's environment reaches the CLI parser."""
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
        monkeypatch.delenv(f"{option.env}_FILE", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", HOME["HOME"])


def table_rows() -> list[list[str]]:
    """The README table's rows as cells, header and rule left out, `\\|` read back as `|`."""
    rows = []
    for line in markdown_table().splitlines()[2:]:
        cells = line.replace("\\|", "\0").strip("|").split(" | ")
        rows.append([cell.strip().replace("\0", "|") for cell in cells])
    return rows


def test_the_table_has_one_row_per_option_in_order_with_its_declaration() -> None:
    """Each README row shows its option's flag, variable, default and help, in OPTIONS order."""
    rows = table_rows()
    assert len(rows) == len(OPTIONS)
    for option, (flag, env, default, help_text) in zip(OPTIONS, rows, strict=True):
        assert flag.strip("`").split(" / ")[0] == option.flag
        assert env == f"`{option.env}`"
        assert default == (f"`{option.default}`" if option.default is not None else "—")
        assert help_text == option.help


def serve_help() -> list[str]:
    """The lines of `serve --help`, wide enough that no option's text wraps."""
    out = StringIO()
    app.help_print(["serve"], console=Console(file=out, width=2000))
    return [line.strip("│ ") for line in out.getvalue().splitlines()]


def test_serve_help_shows_each_option_with_its_variable_default_and_help() -> None:
    """`serve --help` has a line per option, in OPTIONS order, with its help, variable and default,
    and a --no- form for each boolean."""
    lines = serve_help()
    found = []
    for option in OPTIONS:
        (line,) = [line for line in lines if line.startswith(option.flag + " ")]
        # cyclopts renders help as Markdown: a code span loses its backticks.
        assert option.help.replace("`", "") in line, option.name
        assert f"env {option.env}" in line, option.name
        if option.default is not None:
            assert f"default {option.default}]" in line, option.name
        if option.default in ("true", "false"):
            assert f"--no-{option.flag[2:]}" in line, option.name
        found.append(lines.index(line))
    assert found == sorted(found)


@pytest.mark.usefixtures("clean_environ")
@pytest.mark.parametrize("option", OPTIONS, ids=[o.name for o in OPTIONS])
def test_flag_and_variable_set_the_options_own_fields(option: Option) -> None:
    """The option's flag, parsed by the CLI, and its variable give the same Settings, which differ
    from the defaults in exactly the option's own field(s)."""
    text = sample(option)
    _, bound, _ = app.parse_args(["serve", *cli_tokens(option, text)], exit_on_error=False)
    from_flag = settings_from(dict(bound.kwargs))
    from_env = build_settings({}, {**HOME, option.env: text})
    defaults = build_settings({}, HOME)
    assert differing_fields(from_flag, defaults) == set(option.fields)
    assert differing_fields(from_flag, from_env) == set()
    assert from_flag.secret_flags == ((option.flag,) if option.secret else ())


SECRETS = [o for o in OPTIONS if o.secret]


@pytest.mark.parametrize("option", SECRETS, ids=[o.name for o in SECRETS])
def test_a_secrets_file_gives_what_its_variable_gives(option: Option, tmp_path: Path) -> None:
    """<VARIABLE>_FILE of a secret option sets the same field, to the same value, as <VARIABLE>."""
    text = sample(option)
    secret = tmp_path / "secret"
    secret.write_text(text + "\n")
    from_file = build_settings({}, {**HOME, f"{option.env}_FILE": str(secret)})
    from_env = build_settings({}, {**HOME, option.env: text})
    assert differing_fields(from_file, build_settings({}, HOME)) == {option.name}
    assert differing_fields(from_file, from_env) == set()


def test_settings_defaults_are_the_declared_defaults() -> None:
    """Settings() holds what the declared default texts parse to (data_dir: it needs the
    environment, so it alone may differ)."""
    built = build_settings({}, HOME)
    assert differing_fields(Settings(), built) <= {"data_dir"}
