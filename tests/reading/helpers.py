"""Helpers of the reading tests: studies in the archive, analysed by the real AI pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ai"))

from dicom_factory import chest, mammogram, spot_image
from pipeline_helpers import make_pipeline, store, store_files

from qamqor.core.auth import create_user
from qamqor.runtime import Runtime

PASSWORD = "radiologist-password"

__all__ = [
    "PASSWORD",
    "add_user",
    "analyse",
    "chest_study",
    "make_pipeline",
    "mammo_study",
    "store",
    "store_files",
]


def add_user(
    runtime: Runtime, username: str, role: str = "radiologist", full_name: str = ""
) -> int:
    with runtime.session_factory() as session:
        user = create_user(
            session, username=username, password=PASSWORD, role=role, full_name=full_name
        )
        session.commit()
        return user.id


def mammo_study(
    *,
    patient_id: str = "880101300123",
    name: str = "ABENOVA^AIGERIM",
    spot: bool = True,
    accession: str = "MG1",
    institution: str = "Almaty Oncology Center",
    study_date: str = "20260110",
) -> list[Dataset]:
    """Four views (RCC, LCC, RMLO, LMLO); with ``spot`` a bright lesion in the left breast."""
    study_uid = generate_uid()
    series_uid = generate_uid()
    datasets = []
    for number, (side, view) in enumerate(
        [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")], start=1
    ):
        shape = (320, 240)
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        chest_wall_x = shape[1] - 1 if side == "R" else 0
        # Tissue a little brighter towards the chest wall, with some texture.
        pixels = 0.25 + 0.1 * (1 - np.abs(xx - chest_wall_x) / shape[1])
        pixels = pixels + 0.04 * np.sin(xx / 7.0) * np.cos(yy / 5.0)
        if spot and side == "L":
            pixels = pixels + 0.6 * np.exp(-((xx - 70) ** 2 + (yy - 150) ** 2) / (2 * 6.0**2))
        pixels = np.clip(pixels, 0, 1)
        datasets.append(
            mammogram(
                pixels,
                laterality=side,
                view=view,
                study_uid=study_uid,
                series_uid=series_uid,
                InstanceNumber=number,
                PatientID=patient_id,
                PatientName=name,
                AccessionNumber=accession,
                InstitutionName=institution,
                StudyDate=study_date,
                PatientOrientation=["P", "L"] if side == "R" else ["A", "R"],
                ImagerPixelSpacing=[0.2, 0.2],
            )
        )
    return datasets


def chest_study(
    *,
    patient_id: str = "750505400456",
    name: str = "SEITOV^BERIK",
    accession: str = "CR1",
    institution: str = "Regional Hospital 2",
    study_date: str = "20260111",
) -> list[Dataset]:
    return [
        chest(
            spot_image((256, 256), 100, 80),
            PatientID=patient_id,
            PatientName=name,
            AccessionNumber=accession,
            InstitutionName=institution,
            StudyDate=study_date,
            Modality="DX",
        )
    ]


def analyse(runtime: Runtime, *study_uids: str) -> None:
    """Run the real AI pipeline (tiny mammography bundle, shipped chest bundle) on studies."""
    pipeline = make_pipeline(runtime)
    for uid in study_uids:
        pipeline.request(uid)
        pipeline.analyse_study(uid)


def set_ai_result(
    runtime: Runtime,
    study_uid: str,
    *,
    priority: str,
    score: float | None,
    task: str = "chest",
    reason: str = "",
    breast_scores: str = "",
    model: str = "",
) -> None:
    """Record an AI outcome for a study as the pipeline would (for ordering tests that need
    many studies; the pipeline itself runs in the tests that read its results)."""
    from qamqor.ai.analysis import Priority
    from qamqor.ai.models import AIStudy

    with runtime.session_factory() as session:
        session.add(
            AIStudy(
                study_instance_uid=study_uid,
                status="done",
                task=task,
                score=score,
                priority=priority,
                priority_rank=Priority(priority).rank,
                reason=reason,
                breast_scores=breast_scores,
                model=model,
            )
        )
        session.commit()
