"""The DICOM archive: storage, index, DIMSE node, DICOMweb, rendering.

Other parts use only what this module exports.
"""

from qamqor.pacs.service import ArchiveService, StoreResult

__all__ = ["ArchiveService", "StoreResult"]
