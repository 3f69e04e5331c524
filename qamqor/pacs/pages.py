"""The archive's web pages."""

from fastapi import APIRouter

router = APIRouter(tags=["pages"])
