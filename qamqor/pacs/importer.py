"""``qamqor import``: files and folders into the archive, with progress and a summary."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from qamqor.pacs.errors import PacsError
from qamqor.pacs.parsing import ParsedInstance, parse_part10
from qamqor.pacs.service import ArchiveService, StoreOutcome, iter_files

logger = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    stored: int = 0
    present: int = 0
    rejected: int = 0
    rejections: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) for each rejected file."""


#: Files stored together (one fsync round, one transaction), at most this many or bytes.
GROUP_FILES = 32
GROUP_BYTES = 64 * 1024 * 1024


def import_file(archive: ArchiveService, path: str) -> StoreOutcome:
    with open(path, "rb") as handle:
        data = handle.read()
    parsed = parse_part10(data)
    return archive.store_instance(parsed, source="import").outcome


def _store_group(
    archive: ArchiveService, group: list[tuple[str, ParsedInstance]], summary: ImportSummary
) -> None:
    results = archive.store_instances([parsed for _, parsed in group], source="import")
    for (path, _), result in zip(group, results, strict=True):
        if isinstance(result, PacsError):
            summary.rejected += 1
            summary.rejections.append((path, result.message))
        elif isinstance(result, Exception):
            summary.rejected += 1
            summary.rejections.append(
                (path, f"the archive could not store it ({type(result).__name__})")
            )
        elif result.outcome is StoreOutcome.STORED:
            summary.stored += 1
        else:
            summary.present += 1


def import_paths(
    archive: ArchiveService, paths: list[str], *, console: Console | None = None
) -> ImportSummary:
    console = console or Console(stderr=True)
    files = list(iter_files(paths))
    summary = ImportSummary()
    columns = (TextColumn("Importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("import", total=len(files))
        group: list[tuple[str, ParsedInstance]] = []
        group_bytes = 0
        for path in files:
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
                parsed = parse_part10(data)
            except PacsError as exc:
                summary.rejected += 1
                summary.rejections.append((path, exc.message))
                progress.advance(task)
                continue
            except OSError as exc:
                summary.rejected += 1
                summary.rejections.append((path, f"cannot read the file ({exc.strerror})"))
                progress.advance(task)
                continue
            group.append((path, parsed))
            group_bytes += len(parsed.data)
            if len(group) >= GROUP_FILES or group_bytes >= GROUP_BYTES:
                _store_group(archive, group, summary)
                progress.advance(task, len(group))
                group, group_bytes = [], 0
        if group:
            _store_group(archive, group, summary)
            progress.advance(task, len(group))
    for path, reason in summary.rejections:
        console.print(f"[yellow]rejected[/yellow] {path}: {reason}", highlight=False)
    counts = Counter(stored=summary.stored, present=summary.present, rejected=summary.rejected)
    console.print(
        f"{len(files)} files: {counts['stored']} stored, {counts['present']} already present, "
        f"{counts['rejected']} rejected",
        highlight=False,
    )
    return summary
