"""The DICOM node (DIMSE, pynetdicom)."""
