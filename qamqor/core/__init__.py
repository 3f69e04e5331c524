"""Shared core: settings, database, auth, audit, events, errors."""
