"""A study's analysis: real files routed and analysed, results stored back as DICOM (SR TID 1500
and overlays) and as rows, per-breast combination, idempotence, bad input. On SQLite and
PostgreSQL."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from ai_helpers import shipped_bundle
from dicom_factory import make_dataset, mammogram, spot_image
from pipeline_helpers import make_pipeline, store, store_files
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from qamqor.ai.models import AIFinding, AIImage, AIStudy
from qamqor.pacs.models import Instance
from qamqor.runtime import Runtime

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _row(runtime: Runtime, uid: str) -> AIStudy:
    with runtime.session_factory() as session:
        row = session.scalar(select(AIStudy).where(AIStudy.study_instance_uid == uid))
        assert row is not None
        return row


def _read(runtime: Runtime, sop_instance_uid: str) -> Dataset:
    return dcmread(io.BytesIO(runtime.archive.read_instance_bytes(sop_instance_uid)))


def _instances(runtime: Runtime, uid: str) -> list[Instance]:
    with runtime.session_factory() as session:
        return runtime.archive.instances_of(session, study_instance_uid=uid)


def test_real_mammogram_and_chest_film_are_analysed_and_results_archived(
    runtime: Runtime, shared_dicom_dir: Path
) -> None:
    mg_path, cr_path = shared_dicom_dir / "MG1_J2KI.dcm", shared_dicom_dir / "RG1_J2KI.dcm"
    store_files(runtime, mg_path, cr_path)
    pipeline = make_pipeline(runtime)
    mg = dcmread(mg_path, stop_before_pixels=True)
    cr = dcmread(cr_path, stop_before_pixels=True)
    for ds in (mg, cr):
        assert pipeline.request(ds.StudyInstanceUID)
        pipeline.analyse_study(ds.StudyInstanceUID)

    row = _row(runtime, mg.StudyInstanceUID)
    assert (row.status, row.task, row.model) == ("done", "mammo", "tiny-mammo-1.2.3")
    assert row.priority in ("high", "medium", "low") and row.score is not None
    assert row.breast_scores.startswith("L=")
    chest_row = _row(runtime, cr.StudyInstanceUID)
    assert (chest_row.status, chest_row.task, chest_row.model) == (
        "done",
        "chest",
        shipped_bundle("chest-nodule").stem,
    )

    instances = _instances(runtime, mg.StudyInstanceUID)
    classes = sorted(i.sop_class_uid for i in instances)
    assert classes == sorted([SC_CLASS, SR_CLASS, SC_CLASS])  # the film, its SR and overlay
    sr_row = next(i for i in instances if i.sop_class_uid == SR_CLASS)
    assert sr_row.sop_instance_uid == row.report_sop_instance_uid
    sr = _read(runtime, sr_row.sop_instance_uid)
    assert sr.StudyInstanceUID == mg.StudyInstanceUID and sr.PatientID == mg.PatientID
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    groups = report.content.get_planar_roi_measurement_groups()
    with runtime.session_factory() as session:
        findings = session.scalars(
            select(AIFinding)
            .join(AIImage)
            .where(AIImage.sop_instance_uid == mg.SOPInstanceUID)
            .order_by(AIFinding.rank)
        ).all()
    assert len(groups) == len(findings) >= 1
    first = groups[0]
    region = first.roi
    assert region is not None and region.value_type.value == "SCOORD"
    assert region.GraphicType == "POINT"
    x, y = region.GraphicData
    assert abs(x - (findings[0].x + 0.5)) < 1e-3 and abs(y - (findings[0].y + 0.5)) < 1e-3
    referenced = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == mg.SOPInstanceUID
    (score,) = first.get_measurements()
    assert abs(float(score.value) - findings[0].score) < 1e-3
    text = str(sr)
    assert "tiny-mammo" in text and "1.2.3" in text  # model name and version
    assert "AI suspicion score" in text

    overlay_row = next(
        i
        for i in instances
        if i.sop_class_uid == SC_CLASS and i.sop_instance_uid != mg.SOPInstanceUID
    )
    overlay = _read(runtime, overlay_row.sop_instance_uid)
    assert overlay.Modality == "OT" and overlay.PhotometricInterpretation == "RGB"
    assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == mg.SOPInstanceUID
    assert max(overlay.Rows, overlay.Columns) <= 1536

    # The results arriving in the study make it "stable" again: nothing new to analyse.
    assert not pipeline.request(mg.StudyInstanceUID)
    # Analysing again (forced) replaces the rows and stores nothing new.
    before = len(instances)
    assert pipeline.request(mg.StudyInstanceUID, force=True)
    pipeline.analyse_study(mg.StudyInstanceUID)
    assert len(_instances(runtime, mg.StudyInstanceUID)) == before
    with runtime.session_factory() as session:
        images = session.scalar(select(func.count(AIImage.id)).where(AIImage.ai_study_id == row.id))
    assert images == 1
    assert _row(runtime, mg.StudyInstanceUID).report_sop_instance_uid == row.report_sop_instance_uid


def test_both_views_of_both_breasts_are_combined(runtime: Runtime) -> None:
    study = generate_uid()
    shape = (256, 192)
    faint, strong = spot_image(shape, 40, 120, background=0.2), spot_image(shape, 40, 80)
    faint = np.clip(faint * 0.6, 0, 1)
    views = [
        mammogram(faint, laterality="R", view="CC", study_uid=study, PatientOrientation=["A", "L"]),
        mammogram(
            faint, laterality="R", view="MLO", study_uid=study, PatientOrientation=["A", "FL"]
        ),
        mammogram(faint, laterality="L", view="CC", study_uid=study, PatientOrientation=["A", "R"]),
        mammogram(
            strong, laterality="L", view="MLO", study_uid=study, PatientOrientation=["A", "FR"]
        ),
    ]
    store(runtime, *views)
    pipeline = make_pipeline(runtime)
    assert pipeline.request(study)
    pipeline.analyse_study(study)
    row = _row(runtime, study)
    with runtime.session_factory() as session:
        images = session.scalars(select(AIImage).where(AIImage.ai_study_id == row.id)).all()
        scores = {(i.laterality, i.view): i.score for i in images}
    assert len(scores) == 4 and all(s is not None for s in scores.values())
    breasts = dict(part.split("=") for part in row.breast_scores.split(";"))
    assert float(breasts["L"]) == pytest.approx(scores[("L", "MLO")], abs=1e-4)  # max of views
    assert scores[("L", "MLO")] > scores[("L", "CC")]
    assert float(breasts["R"]) == pytest.approx(
        max(scores[("R", "CC")], scores[("R", "MLO")]), abs=1e-4
    )
    assert row.score == pytest.approx(float(breasts["L"]), abs=1e-4)  # study = max of breasts
    assert float(breasts["L"]) > float(breasts["R"])


def test_bad_input_is_not_analysed_with_the_reason(runtime: Runtime) -> None:
    pipeline = make_pipeline(runtime)
    no_side = mammogram(laterality="", Laterality="")
    ct = make_dataset(sop_class="1.2.840.10008.5.1.4.1.1.2", modality="CT")
    store(runtime, no_side, ct)
    for ds, reason in (
        (no_side, "no laterality"),
        (ct, "no chest radiograph or mammogram in the study (modalities: CT)"),
    ):
        queued = pipeline.request(ds.StudyInstanceUID)
        if queued:
            pipeline.analyse_study(ds.StudyInstanceUID)
        row = _row(runtime, ds.StudyInstanceUID)
        assert (row.status, row.priority, row.priority_rank) == ("done", "not_analysed", 0)
        assert reason in row.reason
