"""Columns other parts add to the archive's studies page (pure data: no web imports).

Re-exported by :mod:`qamqor.pacs.pages` (which renders them) and by :mod:`qamqor.pacs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from qamqor.core.i18n import Message


@dataclass(frozen=True)
class StudyBadge:
    """What another capability shows about a study in its column (e.g. the AI priority)."""

    label: str
    """A message id, translated in the template."""
    kind: str
    """A CSS modifier (``badge-<kind>``)."""
    title: str | list[Message] = ""
    """A longer explanation (tooltip): plain text, or messages translated on the page."""


class StudyListExtension(Protocol):
    """A column other capabilities add to the studies page, and optionally a sort order.

    The archive knows nothing of them: they register with :func:`register_study_list_extension`
    when their router is imported (``qamqor.capabilities.routers``).
    """

    name: str
    header: str
    """Column header: a message id, translated in the template."""
    sort_label: str
    """Label of the sort option: a message id."""

    def order_by(self) -> list[Any]:
        """Sort keys (correlated to ``pacs_studies``) that go before the newest-first order."""
        ...

    def badges(self, session: Session, study_uids: list[str]) -> dict[str, StudyBadge]:
        """The column's value for each of these studies (missing: nothing to show)."""
        ...


STUDY_LIST_EXTENSIONS: list[StudyListExtension] = []


def register_study_list_extension(extension: StudyListExtension) -> None:
    if all(e.name != extension.name for e in STUDY_LIST_EXTENSIONS):
        STUDY_LIST_EXTENSIONS.append(extension)
