"""Crash safety of the two-phase store, without a server: the recovery rules themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from qamqor.pacs.storage import FileSystemStorage


def test_staged_file_with_committed_row_is_finished_and_without_row_is_dropped(
    tmp_path: Path,
) -> None:
    storage = FileSystemStorage(tmp_path)
    committed = storage.stage(storage.relative_path_for("1.2.3.1"), b"committed")
    orphan = storage.stage(storage.relative_path_for("1.2.3.2"), b"never indexed")
    report = storage.recover(lambda path: path == committed.relative_path)

    assert (report.finished, report.discarded) == (1, 1)
    assert storage.read(committed.relative_path) == b"committed"
    assert not storage.absolute_path(orphan.relative_path).exists()
    assert list(storage.staging.iterdir()) == []


def test_committed_but_unpublished_file_is_readable(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path)
    staged = storage.stage(storage.relative_path_for("1.2.3.4"), b"data")
    # Between the index commit and the rename a reader still finds the bytes.
    assert storage.read(staged.relative_path) == b"data"
    storage.publish(staged)
    assert storage.absolute_path(staged.relative_path).read_bytes() == b"data"


def test_duplicate_loser_is_dropped_when_winner_already_published(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path)
    path = storage.relative_path_for("1.2.3.5")
    winner = storage.stage(path, b"winner")
    loser = storage.stage(path, b"winner")
    storage.publish(winner)
    report = storage.recover(lambda _path: True)
    assert report.discarded == 1
    assert not loser.staged_path.exists()
    assert storage.read(path) == b"winner"


def test_a_group_is_made_durable_together_and_a_failed_fsync_is_reported(
    tmp_path: Path,
) -> None:
    storage = FileSystemStorage(tmp_path)
    group = [
        storage.write_staged(storage.relative_path_for(f"1.2.3.{n}"), b"x" * n)
        for n in range(1, 40)
    ]
    storage.sync_staged(group)
    assert [s.staged_path.read_bytes() for s in group] == [b"x" * n for n in range(1, 40)]

    # A file that cannot be fsync'ed (here: gone) fails the whole group: its caller
    # must not commit rows that would point at it.
    gone = storage.write_staged(storage.relative_path_for("1.2.3.99"), b"gone")
    gone.staged_path.unlink()
    with pytest.raises(FileNotFoundError):
        storage.sync_staged([group[0], gone])

    # Nothing of it was indexed: the next start drops every staged file.
    report = storage.recover(lambda _path: False)
    assert report.discarded == len(group)
    assert list(storage.staging.iterdir()) == []
