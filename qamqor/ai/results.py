"""AI results as DICOM, so that any viewer shows them: a TID 1500 Structured Report and an
overlay image per analysed image (both made with highdicom).

- **Structured Report** (Comprehensive SR, TID 1500 Measurement Report): the observer is the
  model (a device: name, version), the procedure is chest radiography or mammography. Each
  finding is a TID 1410 planar ROI group: a SCOORD ``POINT`` on its source image (PS3.3
  C.18.6.1.2 puts the top-left pixel's corner at (0, 0) and its centre at (0.5, 0.5); our
  findings count pixel centres from 0, so (x, y) is written as (x + 0.5, y + 0.5)),
  its suspicion score (a probability, coded ``99QAMQOR suspicion-score`` because it is the
  model's calibrated probability of a suspicious finding, not of cancer), and the algorithm's
  name and version. A last group holds the study's score and priority.
- **Overlay**: a Secondary Capture (Modality ``OT``, so that it is never analysed itself) of the
  image as displayed, with the model's heat map burnt in (red, the stronger the likelier) and a
  numbered circle on each finding; its longer side is at most ``OVERLAY_MAX_SIDE`` pixels.

UIDs are derived from the study, the model and the analysed instances (``generate_uid`` with
entropy sources): analysing the same images with the same model again gives the same UIDs, so
the archive keeps one copy ("already present") instead of a duplicate.

highdicom checks its arguments and may quote a whole dataset in an exception: callers log the
exception's type only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.sr.codedict import codes

from qamqor import __version__
from qamqor.ai.analysis import ImageAnalysis, StudySummary
from qamqor.ai.bundle import Task
from qamqor.core.fonts import dejavu_sans

# highdicom logs each copied module at INFO; keep its log to warnings and errors.
logging.getLogger("highdicom").setLevel(logging.WARNING)

MANUFACTURER = "Qamqor"
SR_SERIES_NUMBER = 9901
OVERLAY_SERIES_NUMBER = 9902
OVERLAY_MAX_SIDE = 1536
SERIES_DESCRIPTION_SR = "AI triage report"
SERIES_DESCRIPTION_OVERLAY = "AI triage overlay"

SCHEME = "99QAMQOR"
SUSPICION_SCORE = CodedConcept("suspicion-score", SCHEME, "AI suspicion score")
STUDY_PRIORITY = CodedConcept("triage-priority", SCHEME, "AI triage priority")
PROCEDURES = {
    Task.CHEST: CodedConcept("399208008", "SCT", "Plain chest X-ray"),
    Task.MAMMO: CodedConcept("71651007", "SCT", "Mammography"),
}
FINDING_TYPES = {
    Task.CHEST: CodedConcept("427359005", "SCT", "Solitary nodule of lung"),
    Task.MAMMO: CodedConcept("52988006", "SCT", "Lesion"),
}
_PRIORITY_CODES = {
    "high": CodedConcept("high", SCHEME, "High"),
    "medium": CodedConcept("medium", SCHEME, "Medium"),
    "low": CodedConcept("low", SCHEME, "Low"),
    "not_analysed": CodedConcept("not-analysed", SCHEME, "Not analysed"),
}
_PROBABILITY = CodedConcept("1", "UCUM", "no units")


#: Namespace of the name-based UUIDs behind our result UIDs.
_UID_NAMESPACE = uuid.UUID("6f1d1d2e-5b0a-4d5e-9a55-71616d716f72")


def result_uid(*parts: str) -> str:
    """A UID that is the same for the same parts: ``2.25.`` and the decimal value of a
    name-based UUID (PS3.5 B.2), so re-analyses find their earlier results."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(10).join(['qamqor-ai', *parts])).int}"


#: Type 2 attributes (present, maybe empty) highdicom copies from a source image. Modalities do
#: not always send them; absent ones are added empty to our copy of the header.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def complete_header(source: Dataset) -> Dataset:
    """A copy of a source image's header (no pixels) with the type 2 attributes highdicom
    copies present, empty where the modality left them out."""
    header = Dataset()
    header.update({e.tag: e for e in source if e.keyword != "PixelData"})
    if hasattr(source, "file_meta"):
        header.file_meta = source.file_meta
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _device_observer(
    summary_model: str, analyses: Sequence[ImageAnalysis]
) -> hd.sr.ObserverContext:
    manifest = next(a.manifest for a in analyses if a.manifest is not None)
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", summary_model),
            name=manifest.model_id,
            manufacturer_name=MANUFACTURER,
            model_name=manifest.name,
            serial_number=manifest.version,
        ),
    )


def build_report(
    *,
    sources: dict[str, Dataset],
    analyses: Sequence[ImageAnalysis],
    summary: StudySummary,
    sop_instance_uid: str,
    series_instance_uid: str,
) -> Dataset:
    """The TID 1500 report of a study's analysed images.

    Parameters
    ----------
    sources:
        Header datasets (pixels not needed) of the analysed images, by SOP Instance UID.
    analyses:
        The images' analyses; those without a result are left out.
    """
    analysed = [a for a in analyses if a.result is not None and a.manifest is not None]
    if not analysed or summary.task is None:
        raise ValueError("a report needs at least one analysed image")
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for analysis in analysed:
        assert analysis.result is not None and analysis.manifest is not None
        source = sources[analysis.sop_instance_uid]
        algorithm = hd.sr.AlgorithmIdentification(
            name=analysis.manifest.name, version=analysis.manifest.version
        )
        task = analysis.manifest.task
        for rank, finding in enumerate(analysis.result.findings, start=1):
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POINT,
                graphic_data=np.array([[finding.x + 0.5, finding.y + 0.5]]),
                source_image=hd.sr.SourceImageForRegion.from_source_image(source),
            )
            tracking = hd.sr.TrackingIdentifier(
                uid=result_uid(
                    "finding", analysis.sop_instance_uid, analysis.manifest.model_id, str(rank)
                ),
                identifier=f"AI finding {rank} ({task.value})",
            )
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_region=region,
                    finding_type=FINDING_TYPES[task],
                    algorithm_id=algorithm,
                    measurements=[
                        hd.sr.Measurement(
                            name=SUSPICION_SCORE,
                            value=round(finding.score, 4),
                            unit=_PROBABILITY,
                            algorithm_id=algorithm,
                        )
                    ],
                )
            )
    assert summary.score is not None
    first = analysed[0]
    assert first.manifest is not None
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=result_uid("study-score", sop_instance_uid),
                identifier="AI study score",
            ),
            algorithm_id=hd.sr.AlgorithmIdentification(
                name=first.manifest.name, version=first.manifest.version
            ),
            measurements=[
                hd.sr.Measurement(
                    name=SUSPICION_SCORE,
                    value=round(summary.score, 4),
                    unit=_PROBABILITY,
                )
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=STUDY_PRIORITY, value=_PRIORITY_CODES[summary.priority.value]
                )
            ],
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=None,
            observer_device_context=_device_observer(summary.model, analysed),
        ),
        procedure_reported=PROCEDURES[summary.task],
        imaging_measurements=groups,
    )
    evidence = [complete_header(sources[a.sop_instance_uid]) for a in analysed]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION_SR,
    )
    sr.SoftwareVersions = f"qamqor {__version__}; {summary.model}"
    return sr


def overlay_pixels(analysis: ImageAnalysis, pixels: np.ndarray) -> np.ndarray:
    """RGB uint8: the displayed image with the heat map and numbered findings burnt in."""
    assert analysis.result is not None
    rows, columns = pixels.shape
    scale = min(1.0, OVERLAY_MAX_SIDE / max(rows, columns))
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    grey = Image.fromarray(np.round(pixels * 255).astype(np.uint8)).resize(
        size, Image.Resampling.BILINEAR
    )
    heat = Image.fromarray(np.ascontiguousarray(analysis.result.heatmap, dtype=np.float32), "F")
    heat_array = np.asarray(heat.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    base = np.asarray(grey, dtype=np.float32)[..., None].repeat(3, axis=2)
    floor = 0.2  # below this probability nothing is tinted: the image stays readable
    alpha = np.clip((heat_array - floor) / (1 - floor), 0, 1)[..., None] * 0.55
    red = np.array([255.0, 40.0, 0.0], dtype=np.float32)
    blended = base * (1 - alpha) + red * alpha
    image = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    font = _label_font(max(10, round(min(size) / 50)))
    radius = max(8, round(min(size) * 0.04))
    width = max(2, radius // 6)
    for rank, finding in enumerate(analysis.result.findings, start=1):
        cx, cy = (finding.x + 0.5) * scale, (finding.y + 0.5) * scale
        colour = (255, 255, 0) if rank == 1 else (0, 255, 255)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, outline=colour, width=width)
        draw.text(
            (cx + radius + 2, cy - radius),
            f"{rank}: {finding.score:.2f}",
            fill=colour,
            font=font,
            stroke_width=2,
            stroke_fill=0,
        )
    _draw_label(draw, analysis.result.model, size)
    return np.asarray(image, dtype=np.uint8)


def _label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = dejavu_sans()
    if path is None:
        return ImageFont.load_default()
    return ImageFont.truetype(str(path), size)


def overlay_label(model: str, unicode_font: bool) -> list[str]:
    """The warning burnt into every overlay, Kazakh first; English only where no Unicode font
    is installed (Pillow's built-in bitmap font has no Cyrillic)."""
    if unicode_font:
        return [f"ЖИ · ИИ · AI: {model}", "Диагноз емес · Не диагноз · Not a diagnosis"]
    return [f"AI: {model}", "Not a diagnosis"]


def _draw_label(draw: ImageDraw.ImageDraw, model: str, size: tuple[int, int]) -> None:
    """The label in the top-left corner, as large as fits the width (at most 1/40 of it)."""
    points = max(10, size[0] // 40)
    while True:
        font = _label_font(points)
        lines = overlay_label(model, isinstance(font, ImageFont.FreeTypeFont))
        widest = max(draw.textlength(line, font=font) for line in lines)
        if widest <= size[0] - 8 or points <= 8 or not isinstance(font, ImageFont.FreeTypeFont):
            break
        points -= 1
    y = 4
    for line in lines:
        draw.text((4, y), line, fill=(255, 255, 0), font=font, stroke_width=2, stroke_fill=0)
        y += round(points * 1.25)


def build_overlay(
    *,
    source: Dataset,
    analysis: ImageAnalysis,
    pixels: np.ndarray,
    sop_instance_uid: str,
    series_instance_uid: str,
    instance_number: int,
) -> Dataset:
    """The Secondary Capture overlay of one analysed image (module docstring)."""
    rgb = overlay_pixels(analysis, pixels)
    overlay = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=complete_header(source),
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=OVERLAY_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # replaced below by the source's own
        series_description=SERIES_DESCRIPTION_OVERLAY,
    )
    orientation = source.get("PatientOrientation")
    if isinstance(orientation, str):
        orientation = [orientation]
    overlay.PatientOrientation = list(orientation) if orientation else []
    overlay.Modality = "OT"
    laterality = analysis.laterality
    if laterality in ("L", "R"):
        overlay.Laterality = laterality
    overlay.ImageType = ["DERIVED", "SECONDARY", "AI_OVERLAY"]
    overlay.SoftwareVersions = (
        f"qamqor {__version__}; {analysis.result.model if analysis.result else ''}"
    )
    overlay.DerivationDescription = "AI heat map and findings burnt into the displayed image"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    overlay.SourceImageSequence = [reference]
    return overlay
