"""Qamqor: AI-PACS and digital medical center for a regional health department."""

__version__ = "0.1.0"
