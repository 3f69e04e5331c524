"""``qamqor import``: files and folders into the archive, with progress and a summary.

Every file ends up in one of three lists: stored, already present, or rejected with the
reason (the parser's, which names attributes, tags and offsets, never patient data). No file
stops the import: what cannot be read, parsed or stored is rejected and the next file goes
on, and nothing is left in the archive's staging folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from qamqor.pacs.errors import PacsError
from qamqor.pacs.parsing import ParsedInstance, parse_part10
from qamqor.pacs.service import ArchiveService, StoreOutcome, StoreResult, iter_files

logger = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    files: int = 0
    stored: int = 0
    present: int = 0
    rejected: int = 0
    rejections: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) for each rejected file."""

    def reject(self, path: str, reason: str) -> None:
        self.rejected += 1
        self.rejections.append((path, reason))

    def report(self) -> str:
        """The summary as text: the counts, then each rejected file with its reason."""
        lines = [
            f"{self.files} files: {self.stored} stored, {self.present} already present, "
            f"{self.rejected} rejected"
        ]
        lines.extend(f"rejected {path}: {reason}" for path, reason in self.rejections)
        return "\n".join(lines) + "\n"


#: Files stored together (one fsync round, one transaction), at most this many or bytes.
GROUP_FILES = 32
GROUP_BYTES = 64 * 1024 * 1024


def import_file(archive: ArchiveService, path: str) -> StoreOutcome:
    with open(path, "rb") as handle:
        data = handle.read()
    parsed = parse_part10(data)
    return archive.store_instance(parsed, source="import").outcome


def _reason(error: BaseException) -> str:
    if isinstance(error, PacsError):
        return error.message
    return f"the archive could not store it ({type(error).__name__})"


def _store_group(
    archive: ArchiveService, group: list[tuple[str, ParsedInstance]], summary: ImportSummary
) -> None:
    try:
        results: list[StoreResult | Exception] = archive.store_instances(
            [parsed for _, parsed in group], source="import"
        )
    except Exception as exc:  # the service answers per instance; this is a last resort
        logger.error("storing %d imported files failed: %s", len(group), type(exc).__name__)
        results = [exc] * len(group)
    for (path, _), result in zip(group, results, strict=True):
        if isinstance(result, Exception):
            summary.reject(path, _reason(result))
        elif result.outcome is StoreOutcome.STORED:
            summary.stored += 1
        else:
            summary.present += 1


def _parsed(path: str, summary: ImportSummary) -> ParsedInstance | None:
    """The file read and checked, or None (rejected, with the reason in ``summary``)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        summary.reject(path, f"cannot read the file ({exc.strerror or type(exc).__name__})")
        return None
    try:
        return parse_part10(data)
    except PacsError as exc:
        summary.reject(path, exc.message)
    except Exception as exc:  # a bug, not the file: the next file goes on all the same
        logger.error("reading an imported file failed: %s", type(exc).__name__)
        summary.reject(path, f"the file cannot be read ({type(exc).__name__})")
    return None


def import_paths(
    archive: ArchiveService,
    paths: list[str],
    *,
    console: Console | None = None,
    report: Path | None = None,
) -> ImportSummary:
    """Import every file under ``paths``; the summary goes to ``console`` (and ``report``)."""
    console = console or Console(stderr=True)
    files = list(iter_files(paths))
    summary = ImportSummary(files=len(files))
    columns = (TextColumn("Importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("import", total=len(files))
        group: list[tuple[str, ParsedInstance]] = []
        group_bytes = 0
        for path in files:
            parsed = _parsed(path, summary)
            if parsed is None:
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
        console.print(
            f"[yellow]rejected[/yellow] {escape(path)}: {escape(reason)}", highlight=False
        )
    console.print(
        f"{summary.files} files: {summary.stored} stored, {summary.present} already present, "
        f"{summary.rejected} rejected",
        highlight=False,
    )
    if report is not None:
        report.write_text(summary.report(), encoding="utf-8")
    return summary
