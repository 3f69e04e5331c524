"""The reading capability's listeners, attached by :func:`qamqor.capabilities.attach_jobs`."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field

from qamqor.ai import PRIORITY_SET
from qamqor.core.events import EventBus
from qamqor.core.jobs import JobQueue
from qamqor.core.runtime import Runtime
from qamqor.reading.changes import CHANGES, WorklistChanges
from qamqor.reading.events import CLAIM_CHANGED, REPORT_SIGNED

#: What changes the worklist: a new AI priority, a signed report, a claim.
WORKLIST_EVENTS = (PRIORITY_SET, REPORT_SIGNED, CLAIM_CHANGED)


@dataclass
class Attached:
    """The worklist's listeners on one event bus; ``stop()`` takes them off."""

    events: EventBus
    changes: WorklistChanges
    names: tuple[str, ...] = field(default=WORKLIST_EVENTS)

    def stop(self) -> None:
        for name in self.names:
            with suppress(ValueError):  # stopped twice
                self.events.unsubscribe(name, self.changes.bump)


def attach(runtime: Runtime, queue: JobQueue | None, *, sweep: bool = True) -> Attached:
    """Bump the worklist's change counter on the events that change it (no jobs, no sweep)."""
    for name in WORKLIST_EVENTS:
        runtime.events.subscribe(name, CHANGES.bump)
    return Attached(runtime.events, CHANGES)
