"""The FastAPI application: middleware, error mapping, health, and every capability's routers."""

from __future__ import annotations

import os

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.middleware.sessions import SessionMiddleware

from qamqor import __version__
from qamqor.core.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    settings = runtime.settings
    app = FastAPI(
        title="Qamqor",
        version=__version__,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.runtime = runtime

    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.session_secret(),
        session_cookie="qamqor_session",
        max_age=settings.session_timeout_minutes * 60,
        same_site="lax",
        https_only=settings.environment == "production",
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Content-Type", "Content-Length", "Warning", "X-Total-Count"],
        )

    from qamqor.http.guard import RequestGuard

    # Outermost: cross-site refusals, API body types and JSON limits come before anything
    # reads the request; its headers go on every response, CORS answers included.
    app.add_middleware(RequestGuard, trusted_origins=settings.cors_origins)

    @app.get("/health", tags=["health"])
    def health() -> JSONResponse:
        """200 once the database answers and the storage can be written; 503 otherwise."""
        problems = []
        try:
            with runtime.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            problems.append(f"database: {type(exc).__name__}")
        if not os.access(settings.storage_dir, os.W_OK):
            problems.append("storage: not writable")
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    from qamqor.capabilities import routers

    for router in routers():
        app.include_router(router)

    from qamqor.http.pages import install_page_handlers

    install_page_handlers(app)  # domain errors as JSON; pages: login redirect, 403/404 pages
    return app
