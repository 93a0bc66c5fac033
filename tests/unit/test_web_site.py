"""Loading the web directory: one version for the whole site, stamped on every local asset URL."""

from __future__ import annotations

from pathlib import Path

from agentserver.api.web import load_site, stamp_of


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


SITE = {
    "index.html": '<link href="/style.css"><script type="module" src="/app.js"></script>'
    '<a href="https://example.com/x.js">x</a>',
    "app.js": 'import { a } from "./lib/a.js";\nimport "./side.js";\n'
    "const m = import('../up.js');\n"
    'import x from "bare";\nconst s = "./not-an-import.js";\n',
    "lib/a.js": "export const a = 1;\n",
    "style.css": "body {}\n",
}


def test_local_urls_and_relative_imports_get_the_site_version(tmp_path: Path) -> None:
    """index.html's local assets and every relative import carry ?v=; other strings do not."""
    _write(tmp_path, SITE)
    site = load_site(tmp_path)
    v = site.version
    index = site.assets["index.html"].body.decode()
    assert f'href="/style.css?v={v}"' in index
    assert f'src="/app.js?v={v}"' in index
    assert 'href="https://example.com/x.js"' in index
    app = site.assets["app.js"].body.decode()
    assert f'from "./lib/a.js?v={v}"' in app
    assert f'import "./side.js?v={v}"' in app
    assert f"import('../up.js?v={v}')" in app
    assert 'from "bare"' in app
    assert '"./not-an-import.js"' in app
    assert site.assets["app.js"].content_type.startswith("text/javascript")


def test_any_edit_changes_the_version_and_the_stamp(tmp_path: Path) -> None:
    """Changing one file's content gives a new version (and a new stamp for the reload check)."""
    _write(tmp_path, SITE)
    before, stamp = load_site(tmp_path).version, stamp_of(tmp_path)
    _write(tmp_path, {"lib/a.js": "export const a = 22;\n"})  # a new size: mtimes may be coarse
    assert load_site(tmp_path).version != before
    assert stamp_of(tmp_path) != stamp
    assert load_site(tmp_path).version == load_site(tmp_path).version
