"""Events the AI capability announces (names importable by listeners without the pipeline)."""

from __future__ import annotations

from typing import Final

#: A study's AI priority is set: payload ``study_instance_uid: str``, ``priority: str``.
PRIORITY_SET: Final = "ai.priority_set"
