"""The DICOM archive: storage, index, DIMSE node, DICOMweb, rendering."""
