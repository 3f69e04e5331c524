"""Fixtures of the reading tests."""
