"""The DICOM node (DIMSE, pynetdicom): C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET."""

from qamqor.pacs.dimse.node import DicomNode

__all__ = ["DicomNode"]
