"""File storage for DICOM instances, with crash-safe writes.

A store is two-phase, with the staging folder acting as a redo log:

1. ``stage``: the bytes go to ``tmp/<encoded final path>~~<unique>``; the file and the staging
   folder (which holds its name) are fsync'ed. ``write_staged`` + ``sync_staged`` split this
   for callers that stage several files at once: one fsync of the folder covers every name
   created before it, and the file fsyncs run side by side (the file system commits them
   together), so a group costs about what one file costs.
2. the caller commits the index row, only once step 1 has finished (the file is durable
   before the row exists).
3. ``publish``: the staged file is renamed into place (no fsync, see below).

A crash (even ``kill -9``) between 1 and 2 leaves a staged file with no row: ``recover``
deletes it. A crash between 2 and 3 leaves a row whose file is still staged: ``recover``
finishes the rename. So the next start never sees a half file or a row without its file.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    """What the archive needs from a storage back-end."""

    def relative_path_for(self, sop_instance_uid: str) -> str: ...
    def stage(self, relative_path: str, data: bytes) -> StagedFile: ...
    def write_staged(self, relative_path: str, data: bytes) -> StagedFile: ...
    def sync_staged(self, staged: Sequence[StagedFile]) -> None: ...
    def publish(self, staged: StagedFile) -> None: ...
    def discard(self, staged: StagedFile) -> None: ...
    def read(self, relative_path: str) -> bytes: ...
    def absolute_path(self, relative_path: str) -> Path: ...
    def delete(self, relative_path: str) -> None: ...
    def recover(self, is_indexed: Callable[[str], bool]) -> RecoveryReport: ...


@dataclass(frozen=True)
class StagedFile:
    relative_path: str
    staged_path: Path


@dataclass(frozen=True)
class RecoveryReport:
    finished: int
    """Staged files whose index row was committed: renamed into place."""
    discarded: int
    """Staged files with no index row (or a duplicate of a stored file): deleted."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    # Any descriptor of the file flushes its pages and inode; a write error not yet reported
    # is reported to this one too (Linux errseq).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _fsync_pool() -> ThreadPoolExecutor:
    """Threads that wait in fsync (one set per process, shared by every storage)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="qamqor-fsync")
        return _pool


class FileSystemStorage:
    """Instances as files under ``root/ab/cd/<sha1 of SOP Instance UID>.dcm``."""

    _SEP = "~"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.staging = self.root / "tmp"
        self.staging.mkdir(parents=True, exist_ok=True)

    def relative_path_for(self, sop_instance_uid: str) -> str:
        digest = hashlib.sha1(sop_instance_uid.encode(), usedforsecurity=False).hexdigest()
        return f"{digest[:2]}/{digest[2:4]}/{digest}.dcm"

    def absolute_path(self, relative_path: str) -> Path:
        return self.root / relative_path

    def _staged_prefix(self, relative_path: str) -> str:
        return relative_path.replace("/", self._SEP) + self._SEP * 2

    def stage(self, relative_path: str, data: bytes) -> StagedFile:
        """Write ``data`` to a new staging file and make it durable (bytes and name)."""
        staged = self.write_staged(relative_path, data)
        try:
            self.sync_staged([staged])
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def write_staged(self, relative_path: str, data: bytes) -> StagedFile:
        """Write ``data`` to a new staging file, not yet durable: see ``sync_staged``."""
        # A unique name per attempt: two senders of one UID at once never touch each other's
        # file, and a half-written one is never mistaken for a finished one (no row points
        # at it until it is complete and fsync'ed).
        staged = self.staging / (self._staged_prefix(relative_path) + uuid.uuid4().hex)
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except BaseException:
            os.close(fd)
            staged.unlink(missing_ok=True)
            raise
        os.close(fd)
        return StagedFile(relative_path, staged)

    def sync_staged(self, staged: Sequence[StagedFile]) -> None:
        """Make written staging files durable; returns once they are.

        Each file is fsync'ed, and the staging folder once (the names must be durable before
        a row points at them). The fsyncs of several files run at the same time in background
        threads; those of a single file (a C-STORE) run here, since handing them to the pool
        cost more CPU (thread wake-ups, futures) than the 0.1-0.2 ms they overlapped. Raises
        the first ``OSError`` if any fsync failed, once all have ended.
        """
        if len(staged) == 1:
            _fsync_file(staged[0].staged_path)
            _fsync_dir(self.staging)
            return
        pool = _fsync_pool()
        futures = [pool.submit(_fsync_file, s.staged_path) for s in staged]
        futures.append(pool.submit(_fsync_dir, self.staging))
        wait(futures)
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error

    def publish(self, staged: StagedFile) -> None:
        final = self.absolute_path(staged.relative_path)
        try:
            os.replace(staged.staged_path, final)
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.staged_path, final)
        # No fsync of the folder: after a crash the file is under one name or the other
        # (rename is atomic) and ``recover`` finishes a rename that did not reach the disk.

    def discard(self, staged: StagedFile) -> None:
        staged.staged_path.unlink(missing_ok=True)

    def read(self, relative_path: str) -> bytes:
        final = self.absolute_path(relative_path)
        try:
            return final.read_bytes()
        except FileNotFoundError:
            # Committed but not yet renamed (a few microseconds): read the staged copy.
            for staged in self.staging.glob(self._staged_prefix(relative_path) + "*"):
                return staged.read_bytes()
            raise

    def delete(self, relative_path: str) -> None:
        self.absolute_path(relative_path).unlink(missing_ok=True)

    def recover(self, is_indexed: Callable[[str], bool]) -> RecoveryReport:
        finished = discarded = 0
        for entry in self.staging.iterdir():
            relative_path = entry.name.split(self._SEP * 2)[0].replace(self._SEP, "/")
            if is_indexed(relative_path) and not self.absolute_path(relative_path).exists():
                self.publish(StagedFile(relative_path, entry))
                finished += 1
            else:
                entry.unlink(missing_ok=True)
                discarded += 1
        return RecoveryReport(finished=finished, discarded=discarded)
