"""Scheduling's HTTP routers: the FHIR API."""

from qamqor.scheduling.fhir.router import router as fhir_router

routers = [fhir_router]
