"""The archive's HTTP routers (collected by ``qamqor.capabilities.routers``)."""

from qamqor.pacs.dicomweb import router as dicomweb_router
from qamqor.pacs.pages import router as pages_router

routers = [dicomweb_router, pages_router]
