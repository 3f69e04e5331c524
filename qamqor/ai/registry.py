"""Installed model bundles: which ones there are, which one is active per task, loaded analysers.

Bundles live in ``<data dir>/models/`` (``<name>-<version>.qmodel``), installed from a file
(``qamqor models install FILE``); nothing is ever downloaded. The bundles shipped in the
repository's ``models/`` folder are installed on first use. ``active.json`` in the same folder
says which installed model each task uses (``qamqor models activate NAME``); a task with no
choice recorded uses its newest installed version.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from qamqor.ai.bundle import (
    BUNDLE_SUFFIX,
    Manifest,
    Task,
    install_bundle,
    installed_bundles,
    read_bundle,
)
from qamqor.ai.errors import BundleNotFoundError, InvalidBundleError
from qamqor.ai.inference import Analyser

#: Bundles shipped with Qamqor (the repository's ``models/`` folder).
SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
ACTIVE_FILE = "active.json"


def _version_key(manifest: Manifest) -> tuple[int, int, int, int, str]:
    core, _, pre = manifest.version.partition("-")
    major, minor, patch = (int(part) for part in core.split("."))
    # A release sorts after its pre-releases.
    return major, minor, patch, 0 if pre else 1, pre


@dataclass(frozen=True)
class InstalledModel:
    path: Path
    manifest: Manifest
    active: bool


class ModelStore:
    """The models folder of one data directory. Thread-safe; analysers are loaded once."""

    def __init__(
        self, models_dir: Path, *, shipped_dir: Path | None = SHIPPED_MODELS_DIR, threads: int = 2
    ) -> None:
        self.models_dir = Path(models_dir)
        self.shipped_dir = shipped_dir
        self.threads = threads
        self._lock = threading.Lock()
        self._install_lock = threading.Lock()
        self._analysers: dict[str, Analyser] = {}
        self._shipped_checked = False
        self._listing: tuple[tuple[str, int, int], ...] = ()
        self._bundles: list[tuple[Path, Manifest]] = []

    # Installing ---------------------------------------------------------------------------
    def ensure_shipped(self) -> list[Path]:
        """Install the shipped bundles not installed yet (once per process; callers that come
        while it runs wait for it, so none sees a half-filled folder)."""
        with self._install_lock:
            if self._shipped_checked:
                return []
            installed: list[Path] = []
            if self.shipped_dir is not None and self.shipped_dir.is_dir():
                for candidate in sorted(self.shipped_dir.glob(f"*{BUNDLE_SUFFIX}")):
                    try:
                        target = self.models_dir / read_bundle(candidate).manifest.file_name
                        if not target.exists():
                            installed.append(install_bundle(candidate, self.models_dir))
                    except InvalidBundleError:
                        continue  # a clash or a broken file in the repository: others still go
            self._shipped_checked = True
            return installed

    def install(self, path: Path) -> Manifest:
        """Verify and install a bundle file (see :func:`qamqor.ai.bundle.install_bundle`)."""
        target = install_bundle(Path(path), self.models_dir)
        return read_bundle(target).manifest

    def bundles(self) -> list[tuple[Path, Manifest]]:
        """The installed bundles, verified; read again only when the folder's files change
        (a checksum per bundle per image would cost more than the analysis of a small one)."""
        try:
            listing = tuple(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size)
                for p in sorted(self.models_dir.glob(f"*{BUNDLE_SUFFIX}"))
            )
        except OSError:
            listing = ()
        with self._lock:
            if listing == self._listing and (self._bundles or not listing):
                return list(self._bundles)
        found = installed_bundles(self.models_dir)
        with self._lock:
            self._listing, self._bundles = listing, found
        return list(found)

    # Choosing -----------------------------------------------------------------------------
    def _read_active(self) -> dict[str, str]:
        try:
            data = json.loads((self.models_dir / ACTIVE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _write_active(self, active: dict[str, str]) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.models_dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(active, handle, indent=2, sort_keys=True)
            os.replace(tmp, self.models_dir / ACTIVE_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def installed(self) -> list[InstalledModel]:
        """Every readable installed bundle, with whether it is the one its task uses."""
        self.ensure_shipped()
        bundles = self.bundles()
        active_ids = {self._active_id(task, bundles) for task in Task}
        return [InstalledModel(path, m, m.model_id in active_ids) for path, m in bundles]

    def _active_id(self, task: Task, bundles: list[tuple[Path, Manifest]]) -> str | None:
        of_task = [m for _, m in bundles if m.task is task]
        if not of_task:
            return None
        chosen = self._read_active().get(task.value)
        if chosen and any(m.model_id == chosen for m in of_task):
            return chosen
        return max(of_task, key=_version_key).model_id

    def activate(self, name: str) -> Manifest:
        """Make ``name-version`` (or the newest version of ``name``) its task's active model.

        Raises
        ------
        BundleNotFoundError
            No installed bundle matches ``name``.
        """
        bundles = [m for _, m in self.bundles()]
        matches = [m for m in bundles if m.model_id == name] or [
            m for m in bundles if m.name == name
        ]
        if not matches:
            raise BundleNotFoundError(f"no installed model {name!r} (see 'qamqor models list')")
        chosen = max(matches, key=_version_key)
        with self._lock:
            active = self._read_active()
            active[chosen.task.value] = chosen.model_id
            self._write_active(active)
        return chosen

    def active_manifest(self, task: Task) -> Manifest | None:
        self.ensure_shipped()
        bundles = self.bundles()
        model_id = self._active_id(task, bundles)
        return next((m for _, m in bundles if m.model_id == model_id), None)

    def analyser(self, task: Task) -> Analyser | None:
        """The active model of ``task``, loaded (once), or None when none is installed."""
        self.ensure_shipped()
        bundles = self.bundles()
        model_id = self._active_id(task, bundles)
        if model_id is None:
            return None
        with self._lock:
            cached = self._analysers.get(model_id)
            if cached is not None:
                return cached
        path = next(p for p, m in bundles if m.model_id == model_id)
        analyser = Analyser(path, threads=self.threads)
        with self._lock:
            return self._analysers.setdefault(model_id, analyser)


class FixedModels(ModelStore):
    """Given bundle files only (``qamqor analyze --model FILE``): no folder, no shipped ones."""

    def __init__(self, paths: list[Path], *, threads: int = 2) -> None:
        super().__init__(Path("/nonexistent"), shipped_dir=None, threads=threads)
        self._fixed: dict[Task, Analyser] = {}
        for path in paths:
            analyser = Analyser(path, threads=threads)
            self._fixed[analyser.manifest.task] = analyser

    def installed(self) -> list[InstalledModel]:
        return [
            InstalledModel(a.bundle.path or Path(), a.manifest, True) for a in self._fixed.values()
        ]

    def active_manifest(self, task: Task) -> Manifest | None:
        analyser = self._fixed.get(task)
        return analyser.manifest if analyser else None

    def analyser(self, task: Task) -> Analyser | None:
        return self._fixed.get(task)
