"""Domain errors as HTTP answers: the one mapping from an error's kind to a status code.

Routes let domain errors propagate; the app's handler (``pages.install_page_handlers``)
answers with ``status_for(exc)`` and the error's message (``{"detail": ...}``), or an error
page for a browser. A route that must answer differently (FHIR's OperationOutcome) still asks
``status_for`` for the status.
"""

from __future__ import annotations

from typing import Final

from qamqor.core.errors import ErrorKind, QamqorError

HTTP_STATUS: Final[dict[ErrorKind, int]] = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNPROCESSABLE: 422,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.NOT_ACCEPTABLE: 406,
    ErrorKind.CONFLICT: 409,
    ErrorKind.TOO_MANY_REQUESTS: 429,
    ErrorKind.UNAVAILABLE: 503,
}


def status_for(exc: QamqorError) -> int:
    """The HTTP status of a domain error."""
    return HTTP_STATUS[exc.kind]
