"""The worklist's change counter: bumped when what the worklist shows may have changed.

Per process (the listeners that bump it are attached by :func:`qamqor.reading.jobs.attach`):
a new AI priority, a signed report, a claim taken or given up. The worklist page polls
``GET /reading/api/worklist/changes`` and reloads when the answer differs from the one it
was rendered with; ``process`` tells the answers of different server processes apart.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any


class WorklistChanges:
    """A counter of worklist changes; thread-safe, cheap to read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self.process = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    @property
    def count(self) -> int:
        return self._count

    def bump(self, **_payload: Any) -> None:
        """An event listener (any payload): one more change."""
        with self._lock:
            self._count += 1

    def token(self) -> str:
        """What the page compares: the process and its count."""
        return f"{self.process}:{self._count}"


#: This process's counter.
CHANGES = WorklistChanges()
