"""In-process notification events: one part announces, any number of others listen.

A failing listener is logged (type only) and does not stop the others, nor the announcer.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Listener = Callable[..., None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = defaultdict(list)

    def subscribe(self, name: str, listener: Listener) -> None:
        self._listeners[name].append(listener)

    def unsubscribe(self, name: str, listener: Listener) -> None:
        self._listeners[name].remove(listener)

    def publish(self, name: str, **payload: Any) -> None:
        for listener in list(self._listeners.get(name, ())):
            try:
                listener(**payload)
            except Exception as exc:  # a listener's bug must not fail the store
                logger.error(
                    "listener %s for %s failed: %s",
                    getattr(listener, "__name__", "?"),
                    name,
                    type(exc).__name__,
                )
