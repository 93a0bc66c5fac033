"""The wheel carries the SQL files and the web UI, and finds them when installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (scripts/bootstrap installs it)")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(out.glob("agentserver-*.whl"))


def test_wheel_ships_migrations_queries_and_web(wheel: Path) -> None:
    """Every file of sql/ and web/ is inside the wheel under agentserver/_sql and _web."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, inside in (("sql", "agentserver/_sql"), ("web", "agentserver/_web")):
        for path in (REPO / folder).rglob("*"):
            if path.is_file():
                assert f"{inside}/{path.relative_to(REPO / folder).as_posix()}" in names


def test_installed_wheel_finds_its_sql_and_web(wheel: Path, tmp_path: Path) -> None:
    """Installed from the wheel (not editable), the package reads SQL and web files from itself."""
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    code = "from agentserver.db.paths import sql_dir, web_dir; print(sql_dir()); print(web_dir())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    sql, web = result.stdout.split()
    assert Path(sql) == target / "agentserver/_sql"
    assert Path(web) == target / "agentserver/_web"
    assert (Path(sql) / "migrations/0001_accounts.sql").is_file()
