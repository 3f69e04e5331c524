"""DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS under ``/dicom-web``."""

from fastapi import APIRouter

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
