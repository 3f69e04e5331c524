"""DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS under ``/dicom-web``.

Every route needs a radiologist, technologist or service account (or an admin), by HTTP
Basic, bearer token or session cookie; every read of patient data is audited.
"""

from fastapi import APIRouter

from qamqor.pacs.dicomweb import qido, rendered, stow, wado
from qamqor.pacs.dicomweb.common import PREFIX

router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
router.include_router(qido.router)
router.include_router(rendered.router)
router.include_router(wado.router)
router.include_router(stow.router)

__all__ = ["router"]
