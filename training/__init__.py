"""Reproducible training and evaluation of Qamqor's shipped models (reads ../shared/data)."""
