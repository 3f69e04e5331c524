"""Qamqor: AI-PACS and digital medical center for a regional health department."""

from pydicom import config as _pydicom_config

__version__ = "0.1.0"

# pydicom checks every value it reads against its VR and, when one fails, logs a warning that
# quotes the value: a malformed patient name, ID or birth date would reach Qamqor's logs.
# Qamqor checks what it relies on itself (UIDs, pixel data, the index columns' rules), so
# reading is not validated (this also makes each stored instance about 7 % cheaper). Writing
# keeps pydicom's default checks.
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE
