"""The agent for laptops as one file, assembled from this installation itself.

`build(out)` writes `agentserver-agent.pyz`: a zipapp with only what `agent connect` needs —
the `agentserver` modules `agent/standalone.py` imports (found by reading their imports, so a
new import is picked up without a list to keep) and the pure-Python distributions in
`DISTRIBUTIONS`, copied from the site-packages this server runs from. The server builds it on
the first download (api/downloads.py) and `nox -s agent` builds the same file, so a laptop gets
exactly the agent of the server it connects to, and nothing is fetched from elsewhere.

It runs on Python >= 3.11 wherever its dependencies are pure Python: Linux and macOS; Windows
also needs `cffi` (trio's only native dependency there, absent from a Linux server to copy).
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import agentserver

ENTRY = "agentserver.agent.standalone"
# What `agent connect` imports, with every dependency of theirs (tests/unit/test_agent_bundle.py
# checks this is the closure of their requirements, so a new one fails there, not on a laptop).
ROOTS = ("trio", "trio-websocket", "httpx", "cyclopts")
DISTRIBUTIONS = (
    *ROOTS,
    "anyio",
    "attrs",
    "certifi",
    "docstring-parser",
    "h11",
    "httpcore",
    "idna",
    "markdown-it-py",
    "mdurl",
    "outcome",
    "pygments",
    "rich",
    "rich-rst",
    "sniffio",
    "sortedcontainers",
    "typing-extensions",
    "wsproto",
)
MAIN = b"from agentserver.agent.standalone import main\n\nmain()\n"
NATIVE = (".so", ".pyd", ".dylib", ".dll")


class NotBundleable(Exception):
    """This installation cannot make the agent file (a dependency is native or missing)."""


@dataclass(frozen=True, slots=True)
class Bundle:
    path: Path
    size: int
    modules: tuple[str, ...]  # the agentserver modules inside


def _package_root() -> Path:
    return Path(agentserver.__file__).resolve().parent


def _module_file(root: Path, module: str) -> Path | None:
    """The source of `agentserver.x.y` under `root` (the agentserver folder), if it exists."""
    parts = module.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(source: Path, module: str) -> set[str]:
    """The agentserver modules `module` (in `source`) imports, anywhere in its body."""
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "agentserver" or name.startswith("agentserver.")}


def agent_modules(root: Path | None = None) -> dict[str, Path]:
    """Every agentserver module the agent entry needs, with its parents' `__init__`s."""
    root = root or _package_root()
    needed: dict[str, Path] = {}
    todo = [ENTRY]
    while todo:
        module = todo.pop()
        if module in needed:
            continue
        source = _module_file(root, module)
        if source is None:
            continue  # `from agentserver.x import name`: a name, not a module
        needed[module] = source
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports(source, module))
    return needed


def distribution_files(name: str) -> list[tuple[str, Path]]:
    """(name inside the zip, file on disk) for one installed distribution, sources only."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise NotBundleable(f"{name} is not installed") from exc
    files: list[tuple[str, Path]] = []
    for entry in dist.files or ():
        inside = entry.as_posix()
        if inside.startswith("..") or "__pycache__" in inside or inside.endswith(".pyc"):
            continue  # scripts outside site-packages, bytecode
        if inside.endswith(NATIVE):
            raise NotBundleable(f"{name} is not pure Python ({inside})")
        files.append((inside, Path(str(dist.locate_file(entry)))))
    return files


def build(out: Path) -> Bundle:
    """Write the agent zipapp to `out` (atomically: a partial file is never left at `out`)."""
    root = _package_root()
    modules = agent_modules(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as raw:
            raw.write(b"#!/usr/bin/env python3\n")
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("__main__.py", MAIN)
                for source in sorted(modules.values()):
                    inside = "agentserver/" + source.relative_to(root).as_posix()
                    archive.write(source, inside)
                for name in DISTRIBUTIONS:
                    for inside, path in distribution_files(name):
                        if path.is_file():
                            archive.write(path, inside)
        partial.chmod(0o755)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return Bundle(out, out.stat().st_size, tuple(sorted(modules)))


def main() -> None:
    """`python -m agentserver.agent_bundle OUT`: build the agent file (used by `nox -s agent`)."""
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "dist/agentserver-agent.pyz")
    bundle = build(out)
    print(f"{bundle.path}: {bundle.size / 1e6:.1f} MB, {len(bundle.modules)} agentserver modules")


if __name__ == "__main__":
    main()
