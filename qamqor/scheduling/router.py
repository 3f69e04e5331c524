"""Scheduling's HTTP routers: the FHIR API and the staff's queue API."""

from qamqor.scheduling.api import router as queue_router
from qamqor.scheduling.fhir.router import router as fhir_router

routers = [fhir_router, queue_router]
