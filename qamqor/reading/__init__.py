"""The radiologist's reading workstation: worklist, viewer pages, structured reports.

Public surface: :class:`~qamqor.reading.service.ReadingService` (worklist, claims, reports) and
the coded values in :mod:`qamqor.reading.enums`.
"""
