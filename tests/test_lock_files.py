"""The lock files that the install scripts use agree with pyproject.toml's dependencies."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def locked(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            package, _, version = line.partition("==")
            assert version, f"requirements/{name}: {line!r} is not pinned with =="
            pins[canonicalize_name(package)] = version
    return pins


@pytest.mark.parametrize(("lock", "extras"), [("base.txt", []), ("test.txt", ["test"])])
def test_every_dependency_is_locked_at_a_version_pyproject_allows(
    lock: str, extras: list[str]
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    pins = locked(lock)
    for spec in wanted:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements/{lock}: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{lock} has {name}=={pins[name]}, pyproject wants "
            f"{requirement.specifier}: run scripts/lock"
        )
