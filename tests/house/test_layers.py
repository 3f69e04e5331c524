"""The house's rules, checked on the code itself: layers (import-linter), public surfaces,
and a role on every route that serves data."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qamqor.capabilities import CAPABILITIES
from qamqor.http.navigation import route_roles
from qamqor.runtime import Runtime
from qamqor.web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "qamqor"
PARTS = [name.removeprefix("qamqor.") for name in CAPABILITIES if name != "qamqor.core"]
#: Below the parts: any part may use any of their modules.
SHARED = {"core", "http"}


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(tool), "--no-cache", "--config", str(cwd / "pyproject.toml")],
        cwd=cwd,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_linter_contracts_are_kept() -> None:
    answer = _lint_imports(ROOT)
    assert answer.returncode == 0, answer.stdout[-3000:]
    assert "0 broken" in answer.stdout


def test_import_linter_catches_the_archive_importing_reading(tmp_path: Path) -> None:
    """The contracts fail when the code breaks them (here: pacs -> reading)."""
    shutil.copytree(PACKAGE, tmp_path / "qamqor", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    storage = tmp_path / "qamqor" / "pacs" / "storage.py"
    storage.write_text(storage.read_text() + "\nimport qamqor.reading.service  # noqa\n")
    answer = _lint_imports(tmp_path)
    assert answer.returncode == 1, answer.stdout[-3000:]
    assert "The archive knows nothing of what reads it BROKEN" in answer.stdout


def _imports(path: Path) -> list[tuple[int, str]]:
    """The ``qamqor.*`` modules ``path`` imports (``from X import y`` gives X and X.y)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.startswith("qamqor.")]


def test_parts_use_each_other_only_through_their_public_surface() -> None:
    """``from qamqor.pacs import ArchiveService``, never ``qamqor.pacs.models``: a part's
    tables and modules are its own, so it can change them."""
    broken: list[str] = []
    for part in PARTS:
        for path in sorted((PACKAGE / part).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for line, name in _imports(path):
                other = name.split(".")[1]
                if other == part or other in SHARED or other not in PARTS:
                    continue
                if name != f"qamqor.{other}":
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert broken == [], "\n".join(broken)


@pytest.mark.parametrize("part", PARTS)
def test_public_surface_imports_without_the_web_layer(part: str) -> None:
    """A worker, a command or another part can use a part without loading any web code."""
    code = (
        f"import sys, qamqor.{part}\n"
        "web = sorted(m for m in sys.modules if m.split('.')[:2] in (['qamqor', 'web'],"
        " ['qamqor', 'http']) or m.split('.')[0] in ('fastapi', 'starlette', 'jinja2'))\n"
        "print(' '.join(web))\n"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert answer.stdout.strip() == "", f"qamqor.{part} loads {answer.stdout.strip()}"


#: Routes without a role: signing in and out, the language, health, FHIR's capability
#: statement, a kiosk's activation with its device token; the home page (anyone signed in:
#: it lists what their role may use). Static files (``.../static/{name}``) too.
OPEN_ROUTES = {
    "/",
    "/health",
    "/login",
    "/logout",
    "/language",
    "/favicon.ico",
    "/fhir/metadata",
    "/kiosk/activate",
    "/kiosk/language",
    "/kiosk/end",  # only clears the resident's session (the idle timer lands here)
}


def test_every_route_requires_a_role(runtime: Runtime) -> None:
    routes = route_roles(create_app(runtime))
    assert sum(roles is not None for _, roles in routes) > 50  # the check sees the guards
    unguarded = sorted(
        path
        for path, roles in routes
        if roles is None and path not in OPEN_ROUTES and not path.endswith("/static/{name}")
    )
    assert unguarded == [], "routes without a role guard:\n" + "\n".join(unguarded)
