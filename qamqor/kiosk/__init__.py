"""The self-service terminal (kiosk) at ``/kiosk`` and the hall display at ``/kiosk/hall``.

Uses ``registry`` and ``scheduling`` only through their services. Devices are ``kiosk`` users
placed at a facility (``qamqor kiosk add``); residents sign in with their IIN and a one-time
code sent to the phone on record (``qamqor.kiosk.sms``).
"""
