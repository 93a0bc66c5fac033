"""README.md stays true: its configuration table is the one the code generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agentserver.settings import markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"
SCRIPTS = README.parent / "scripts"


def test_readme_configuration_table_matches_options() -> None:
    """The table between the config-table markers lists every option as the settings do."""
    text = README.read_text()
    start = text.index("<!-- config-table:start -->\n") + len("<!-- config-table:start -->\n")
    end = text.index("<!-- config-table:end -->")
    assert text[start:end] == markdown_table()


def test_readme_helm_values_table_matches_values_yaml() -> None:
    """The Helm values table is the one scripts/helm_values_table.py makes from values.yaml."""
    spec = importlib.util.spec_from_file_location(
        "helm_values_table", SCRIPTS / "helm_values_table.py"
    )
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = README.read_text()
    start = text.index("<!-- helm-values:start -->\n") + len("<!-- helm-values:start -->\n")
    end = text.index("<!-- helm-values:end -->")
    assert text[start:end] == script.markdown_table()


def test_readme_shows_the_test_command_ci_runs() -> None:
    """.ci/run executes exactly the test command README.md tells newcomers to run."""
    ci = (README.parent / ".ci/run").read_text()
    assert "scripts/test    #" in README.read_text()
    assert "exec scripts/test\n" in ci
