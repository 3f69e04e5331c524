"""``qamqor import``: files and folders into the archive, with progress and a summary."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from qamqor.pacs.errors import PacsError
from qamqor.pacs.parsing import parse_part10
from qamqor.pacs.service import ArchiveService, StoreOutcome, iter_files

logger = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    stored: int = 0
    present: int = 0
    rejected: int = 0
    rejections: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) for each rejected file."""


def import_file(archive: ArchiveService, path: str) -> StoreOutcome:
    with open(path, "rb") as handle:
        data = handle.read()
    parsed = parse_part10(data)
    return archive.store_instance(parsed, source="import").outcome


def import_paths(
    archive: ArchiveService, paths: list[str], *, console: Console | None = None
) -> ImportSummary:
    console = console or Console(stderr=True)
    files = list(iter_files(paths))
    summary = ImportSummary()
    columns = (TextColumn("Importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("import", total=len(files))
        for path in files:
            try:
                outcome = import_file(archive, path)
            except PacsError as exc:
                summary.rejected += 1
                summary.rejections.append((path, exc.message))
            except OSError as exc:
                summary.rejected += 1
                summary.rejections.append((path, f"cannot read the file ({exc.strerror})"))
            else:
                if outcome is StoreOutcome.STORED:
                    summary.stored += 1
                else:
                    summary.present += 1
            progress.advance(task)
    for path, reason in summary.rejections:
        console.print(f"[yellow]rejected[/yellow] {path}: {reason}", highlight=False)
    counts = Counter(stored=summary.stored, present=summary.present, rejected=summary.rejected)
    console.print(
        f"{len(files)} files: {counts['stored']} stored, {counts['present']} already present, "
        f"{counts['rejected']} rejected",
        highlight=False,
    )
    return summary
