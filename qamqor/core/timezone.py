"""Times shown to people: in the facility's zone, else the region's (``Settings.timezone``).

The database holds UTC; this is the one place that turns a zone's name into a zone.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from qamqor.core.settings import Settings


@lru_cache(maxsize=64)
def zone_named(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Asia/Almaty``); ``ValueError`` naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Almaty)") from None


def region_zone(settings: Settings) -> ZoneInfo:
    """The region's zone, from settings (checked when the settings are read)."""
    return zone_named(settings.timezone)


def facility_zone(settings: Settings, name: str | None) -> ZoneInfo:
    """A facility's own zone when it names a valid one, else the region's."""
    if name:
        try:
            return zone_named(name)
        except ValueError:
            pass
    return region_zone(settings)


def local_time(moment: datetime, zone: tzinfo) -> datetime:
    """``moment`` in ``zone``; a naive ``moment`` is UTC (how SQLite returns stored times)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone)
