"""Sending one-time codes by SMS through a configurable HTTP gateway.

The gateway is any HTTP endpoint that takes ``POST`` JSON ``{"to": "+77...", "text": "..."}``
with ``Authorization: Bearer <sms_gateway_token>`` and answers 2xx. Kazakh operators' SMS
aggregators offer such an API, or a small adapter in front of theirs does. Without a gateway URL
Qamqor is in demo mode: the code is shown on the kiosk's screen instead.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Protocol

from qamqor.core.i18n import N_
from qamqor.core.settings import Settings
from qamqor.kiosk.errors import SmsError

logger = logging.getLogger(__name__)


class SmsGateway(Protocol):
    demo: bool

    def send(self, *, to: str, text: str) -> None: ...


class DemoGateway:
    """Sends nothing: the kiosk shows the code on screen (demonstrations only)."""

    demo = True

    def send(self, *, to: str, text: str) -> None:
        return None


class HttpGateway:
    demo = False

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url, self.token, self.timeout = url, token, timeout

    def send(self, *, to: str, text: str) -> None:
        body = json.dumps({"to": to, "text": text}).encode()
        request = urllib.request.Request(  # noqa: S310 (the URL is the operator's setting)
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                if not 200 <= response.status < 300:
                    raise SmsError(
                        N_("The code could not be sent. Please try again."), permanent=False
                    )
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            # Never the number or the text: only what failed.
            logger.warning("SMS gateway failed: %s", type(exc).__name__)
            raise SmsError(
                N_("The code could not be sent. Please try again."), permanent=False
            ) from None


def gateway_for(settings: Settings) -> SmsGateway:
    if settings.sms_demo_mode:
        return DemoGateway()
    return HttpGateway(settings.sms_gateway_url, settings.sms_gateway_token.get_secret_value())
