"""What a signed-in person may open: the top bar, the home page, where sign-in lands.

Which roles may open a place is never written here: it is read from the route that serves it.
``require_page_role`` and ``require_role`` mark the guards they build with the roles they let
through (``allowed_roles``), so the navigation offers exactly what the role would not get a
403 on, and changes with the routes. This module only names the places worth offering, in the
order they are offered: a role lands on the first page it may open, or, with none, on the home
page (``/``), which lists the services its role may use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import fastapi.routing
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Match

from qamqor.core.auth import Role
from qamqor.core.i18n import N_

HOME_PATH = "/"


@dataclass(frozen=True)
class Place:
    """A page in the top bar, or a service (an API) listed on the home page."""

    path: str
    label: str
    """A msgid."""
    description: str
    """A msgid."""


#: The pages of the top bar, in order; a role lands on the first it may open.
PAGES = (
    Place(
        "/studies",
        N_("Studies"),
        N_("The archive's studies, with their patients, series and images."),
    ),
    Place(
        "/reading",
        N_("Reading"),
        N_("The radiologist's worklist, the viewer and the reports."),
    ),
)
#: Services for programs (the routes under each path), listed on the home page.
SERVICES = (
    Place(
        "/fhir",
        N_("FHIR R4 API of the registry"),
        N_("Residents, doctors, schedules, free slots and appointments; booking."),
    ),
    Place(
        "/api/queue",
        N_("Queue API"),
        N_("Calls the next ticket of a facility's queue to a room: POST /api/queue/P1/call-next."),
    ),
    Place(
        "/dicom-web",
        N_("DICOMweb API of the archive"),
        N_("Studies and images for viewers and modalities: QIDO-RS, WADO-RS, STOW-RS."),
    ),
    Place(
        "/api/ai",
        N_("AI triage API"),
        N_("The AI priority and findings of each study."),
    ),
    Place(
        "/reading/api/agreement",
        N_("AI agreement statistics"),
        N_("How often radiologists agreed with the AI, per model (no patient data)."),
    ),
)
#: How each role is called on the home page.
ROLE_NAMES: dict[Role, str] = {
    Role.ADMIN: N_("Administrator"),
    Role.RADIOLOGIST: N_("Radiologist"),
    Role.TECHNOLOGIST: N_("Radiographer"),
    Role.REGISTRAR: N_("Registrar"),
    Role.OPERATOR: N_("Contact-centre operator"),
    Role.HEAD: N_("Department head"),
    Role.SERVICE: N_("Service account"),
    Role.KIOSK: N_("Self-service kiosk"),
}


def _guards(dependant: Any) -> Iterator[frozenset[Role]]:
    for dependency in dependant.dependencies:
        roles = getattr(dependency.call, "allowed_roles", None)
        if roles is not None:
            yield frozenset(roles)
        yield from _guards(dependency)


@dataclass(frozen=True)
class _Route:
    """One of the app's routes as it answers: its full path, its guards' roles, a matcher."""

    path: str
    roles: frozenset[Role] | None
    """What every guard on it lets through; ``None``: no role guard (anyone signed in, or
    anyone at all)."""
    matches: Any


def _roles(dependant: Any) -> frozenset[Role] | None:
    allowed: frozenset[Role] | None = None
    for roles in _guards(dependant):
        allowed = roles if allowed is None else allowed & roles
    return allowed


def _routes(app: FastAPI) -> list[_Route]:
    """Every API route of the app with its full path. FastAPI from 0.16x keeps included routers
    as they are (``iter_route_contexts`` walks them, as its OpenAPI does); before, their
    routes were copied into ``app.routes``."""
    found = []
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    contexts: Iterable[Any] = walk(app.routes) if walk is not None else app.routes
    for context in contexts:
        route = getattr(context, "original_route", context)
        if not isinstance(route, APIRoute):
            continue
        dependant = getattr(context, "dependant", None) or route.dependant
        found.append(_Route(str(context.path), _roles(dependant), context.matches))
    return found


def route_roles(app: FastAPI) -> list[tuple[str, frozenset[Role] | None]]:
    """Every API route's full path with the roles its guards let through (``None``: no role
    guard): what the house's tests check against the routes that may be open."""
    return [(route.path, route.roles) for route in _routes(app)]


def _page_route(routes: list[_Route], path: str) -> _Route | None:
    """The route that answers ``GET path``."""
    scope = {"type": "http", "method": "GET", "path": urlsplit(path).path, "root_path": ""}
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
    return None


@dataclass(frozen=True)
class Map:
    """Each place with the roles that may open it (read from the app's routes, once)."""

    pages: tuple[tuple[Place, frozenset[Role]], ...]
    services: tuple[tuple[Place, frozenset[Role]], ...]


def site_map(app: FastAPI) -> Map:
    cached = getattr(app.state, "navigation_map", None)
    if isinstance(cached, Map):
        return cached
    routes = _routes(app)
    pages = []
    for place in PAGES:
        route = _page_route(routes, place.path)
        if route is not None:
            pages.append((place, route.roles if route.roles is not None else frozenset(Role)))
    services = []
    for place in SERVICES:
        found: set[Role] = set()
        for route in routes:
            if route.path == place.path or route.path.startswith(place.path + "/"):
                found |= route.roles or set()
        if found:
            services.append((place, frozenset(found)))
    built = Map(tuple(pages), tuple(services))
    app.state.navigation_map = built
    app.state.navigation_routes = routes
    return built


def pages_for(app: FastAPI, role: Role) -> list[Place]:
    """The top bar's pages ``role`` may open, in order."""
    return [place for place, roles in site_map(app).pages if role in roles]


def services_for(app: FastAPI, role: Role) -> list[Place]:
    return [place for place, roles in site_map(app).services if role in roles]


def landing(app: FastAPI, role: Role) -> str:
    """Where ``role`` lands after signing in: its first page, else the home page."""
    pages = pages_for(app, role)
    return pages[0].path if pages else HOME_PATH


def may_open(app: FastAPI, role: Role, path: str) -> bool:
    """Whether ``role`` passes the role guard of the page at ``path`` (unknown paths: yes,
    the page itself answers)."""
    site_map(app)
    route = _page_route(app.state.navigation_routes, path)
    return route is None or route.roles is None or role in route.roles


def destination(app: FastAPI, role: Role, path: str) -> str:
    """``path`` if ``role`` may open it, else where ``role`` lands: signing in never ends on
    a page that answers 403."""
    return path if may_open(app, role, path) else landing(app, role)
