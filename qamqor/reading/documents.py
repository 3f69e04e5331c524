"""A signed report as DICOM: a Comprehensive SR with the coded findings, and the same report as
a PDF, itself stored as an Encapsulated PDF instance. Pure functions: content in, datasets out.

Codes: DICOM (DCM), SNOMED CT (SCT) and LOINC (LN) where a standard code exists; the BI-RADS
categories, breast composition and Fleischner follow-up use the ACR's and our own words under
the local coding scheme ``99QMQ`` (a private scheme designator, PS3.16 8.2), so that any viewer
shows them as text and our own code can read them back.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import highdicom as hd
from fpdf import FPDF
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from qamqor import __version__
from qamqor.ai import complete_header
from qamqor.core.fonts import dejavu_sans
from qamqor.core.i18n import N_, gettext
from qamqor.core.timezone import local_time
from qamqor.reading.enums import Template
from qamqor.reading.errors import ReadingError
from qamqor.reading.schemas import ReportContent

MANUFACTURER = "Qamqor"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
REPORT_SERIES_NUMBER = 9100
PDF_SERIES_NUMBER = 9101
LOCAL = "99QMQ"

TITLE_MAMMO = Code("24606-6", "LN", "MG Breast Screening")
TITLE_CHEST = Code("18748-4", "LN", "Diagnostic imaging report")
FINDING = Code("121071", "DCM", "Finding")
IMPRESSION = Code("121073", "DCM", "Impression")
RECOMMENDATION = Code("121075", "DCM", "Recommendation")
FINDING_SITE = Code("363698007", "SCT", "Finding Site")
LATERALITY = Code("272741003", "SCT", "Laterality")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
ASSESSMENT = Code("111005", "DCM", "Assessment Category")
DIAMETER = Code("81827009", "SCT", "Diameter")
MM = Code("mm", "UCUM", "millimeter")
DENSITY = Code("density", LOCAL, "Breast composition (ACR BI-RADS)")
SEX_CODES = {"R": RIGHT, "L": LEFT}


def report_uid(kind: str, study_instance_uid: str, version: int) -> str:
    """A UID derived from the study and the version: signing again stores nothing new."""
    return str(
        generate_uid(entropy_srcs=["qamqor-reading", kind, study_instance_uid, str(version)])
    )


@dataclass(frozen=True)
class SignedBy:
    username: str
    full_name: str
    organisation: str
    signed_at: datetime
    zone: tzinfo = UTC
    """Where the signature is shown (the report's facility or region zone)."""


def _tr(language: str, text: str) -> str:
    return gettext(language, text)


def _local(value: str, meaning: str) -> Code:
    return Code(value[:16], LOCAL, meaning[:64])


def report_lines(content: ReportContent, language: str) -> list[tuple[str, str]]:
    """The report as (label, text) lines in ``language`` (for the PDF and the page)."""
    from qamqor.reading import enums

    lines: list[tuple[str, str]] = []

    def t(text: str) -> str:
        return _tr(language, text)

    if content.template is Template.MAMMO:
        if content.density:
            lines.append((t(N_("Breast density")), t(content.density.label)))
        if content.birads_right:
            lines.append((t(N_("BI-RADS, right breast")), t(content.birads_right.label)))
        if content.birads_left:
            lines.append((t(N_("BI-RADS, left breast")), t(content.birads_left.label)))
        for number, finding in enumerate(content.breast_findings, start=1):
            size = f", {finding.size_mm:g} mm" if finding.size_mm else ""
            lines.append(
                (
                    t(N_("Finding %(num)d")) % {"num": number},
                    f"{t(finding.kind.label)}: {t(finding.side.label)}, "
                    f"{t(finding.location.label)}{size}",
                )
            )
    else:
        for number, chest_finding in enumerate(content.chest_findings, start=1):
            size = f", {chest_finding.size_mm:g} mm" if chest_finding.size_mm else ""
            lines.append(
                (
                    t(N_("Finding %(num)d")) % {"num": number},
                    f"{t(chest_finding.kind.label)}: {t(chest_finding.zone.label)}{size}",
                )
            )
        if content.follow_up:
            lines.append((t(N_("Follow-up")), t(enums.FollowUp(content.follow_up).label)))
    if content.findings_text.strip():
        lines.append((t(N_("Findings")), content.findings_text.strip()))
    lines.append((t(N_("Impression")), content.impression.strip()))
    return lines


def _finding_item(
    kind: Code, site: Code, size_mm: float | None, properties: Sequence[hd.sr.ContentItem] = ()
) -> hd.sr.CodeContentItem:
    """A finding (TID 1400-like): its kind, then its properties, site and diameter."""
    has_properties = hd.sr.RelationshipTypeValues.HAS_PROPERTIES
    item = hd.sr.CodeContentItem(
        name=FINDING, value=kind, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    children = [
        *properties,
        hd.sr.CodeContentItem(name=FINDING_SITE, value=site, relationship_type=has_properties),
    ]
    if size_mm:
        children.append(
            hd.sr.NumContentItem(
                name=DIAMETER, value=size_mm, unit=MM, relationship_type=has_properties
            )
        )
    item.ContentSequence = hd.sr.ContentSequence(children)
    return item


def _items(content: ReportContent) -> list[hd.sr.ContentItem]:
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    has_properties = hd.sr.RelationshipTypeValues.HAS_PROPERTIES
    items: list[hd.sr.ContentItem] = []
    if content.template is Template.MAMMO:
        if content.density:
            items.append(
                hd.sr.CodeContentItem(
                    name=DENSITY,
                    value=_local(f"density-{content.density.value}", content.density.label),
                    relationship_type=contains,
                )
            )
        for side, birads in (("R", content.birads_right), ("L", content.birads_left)):
            if birads is None:
                continue
            item = hd.sr.CodeContentItem(
                name=ASSESSMENT,
                value=_local(f"BIRADS-{birads.value}", f"BI-RADS {birads.label}"),
                relationship_type=contains,
            )
            item.ContentSequence = hd.sr.ContentSequence(
                [
                    hd.sr.CodeContentItem(
                        name=LATERALITY, value=SEX_CODES[side], relationship_type=has_properties
                    )
                ]
            )
            items.append(item)
        for finding in content.breast_findings:
            laterality = hd.sr.CodeContentItem(
                name=LATERALITY,
                value=SEX_CODES[finding.side.value],
                relationship_type=has_properties,
            )
            site = _local(finding.location.value, finding.location.label)
            kind = _local(finding.kind.value, finding.kind.label)
            items.append(_finding_item(kind, site, finding.size_mm, [laterality]))
    else:
        for chest_finding in content.chest_findings:
            kind = _local(chest_finding.kind.value, chest_finding.kind.label)
            site = _local(chest_finding.zone.value, chest_finding.zone.label)
            items.append(_finding_item(kind, site, chest_finding.size_mm))
        if content.follow_up:
            items.append(
                hd.sr.CodeContentItem(
                    name=RECOMMENDATION,
                    value=_local(content.follow_up.value, content.follow_up.label),
                    relationship_type=contains,
                )
            )
    if content.findings_text.strip():
        items.append(
            hd.sr.TextContentItem(
                name=FINDING, value=content.findings_text.strip(), relationship_type=contains
            )
        )
    items.append(
        hd.sr.TextContentItem(
            name=IMPRESSION, value=content.impression.strip(), relationship_type=contains
        )
    )
    return items


def build_sr(
    *,
    evidence: Dataset,
    content: ReportContent,
    signed: SignedBy,
    version: int,
    previous_sr_uid: str = "",
) -> Dataset:
    """The signed report as a Comprehensive SR in ``evidence``'s study (a header of one of its
    images: patient and study attributes are copied from it)."""
    title = TITLE_MAMMO if content.template is Template.MAMMO else TITLE_CHEST
    root = hd.sr.ContainerContentItem(name=title)
    root.ContentSequence = hd.sr.ContentSequence(_items(content))
    study_uid = str(evidence.StudyInstanceUID)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # highdicom quotes header values (names) in warnings
            sr = hd.sr.ComprehensiveSR(
                evidence=[complete_header(evidence)],
                content=root,
                series_instance_uid=report_uid("sr-series", study_uid, 0),
                series_number=REPORT_SERIES_NUMBER,
                sop_instance_uid=report_uid("sr", study_uid, version),
                instance_number=version,
                manufacturer=MANUFACTURER,
                is_complete=True,
                is_final=True,
                is_verified=True,
                institution_name=str(evidence.get("InstitutionName", "") or "") or None,
                verifying_observer_name=_person_name(signed.full_name or signed.username),
                verifying_organization=signed.organisation or MANUFACTURER,
                content_date=signed.signed_at.date(),
                content_time=signed.signed_at.time().replace(microsecond=0),
                series_description="Radiologist report",
            )
    except (TypeError, ValueError, AttributeError) as exc:
        # highdicom's messages may quote the dataset (patient data): only the type goes on.
        raise ReadingError(
            f"the report could not be built as DICOM SR ({type(exc).__name__})"
        ) from None
    sr.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: Kazakh and Russian text
    sr.SoftwareVersions = f"qamqor {__version__}"
    if previous_sr_uid:
        # The amended version points at the one it replaces (Predecessor Documents Sequence).
        reference = Dataset()
        reference.ReferencedSOPClassUID = sr.SOPClassUID
        reference.ReferencedSOPInstanceUID = previous_sr_uid
        series = Dataset()
        series.SeriesInstanceUID = sr.SeriesInstanceUID
        series.ReferencedSOPSequence = [reference]
        predecessor = Dataset()
        predecessor.StudyInstanceUID = study_uid
        predecessor.ReferencedSeriesSequence = [series]
        sr.PredecessorDocumentsSequence = [predecessor]
    return sr


def _person_name(name: str) -> str:
    parts = name.split()
    if len(parts) >= 2:
        return f"{parts[-1]}^{' '.join(parts[:-1])}"[:64]
    return name[:64] or "UNKNOWN"


def _font_path(bold: bool = False) -> Path:
    found = dejavu_sans(bold=bold)
    if found is not None:
        return found
    raise ReadingError(
        "the PDF font (DejaVu Sans, Debian package fonts-dejavu-core) is not installed",
        permanent=False,
    )


def build_pdf(
    *,
    content: ReportContent,
    language: str,
    signed: SignedBy,
    version: int,
    patient_name: str,
    patient_id: str,
    study_date: str,
    accession: str,
    description: str,
    amended: bool,
) -> bytes:
    """The report as a PDF in ``language`` (Kazakh and Russian letters need a Unicode font)."""

    def t(text: str) -> str:
        return _tr(language, text)

    pdf = FPDF(format="A4")
    pdf.set_creator(f"Qamqor {__version__}")
    pdf.set_title(t(N_("Radiology report")))
    pdf.add_font("DejaVu", "", str(_font_path()))
    pdf.add_font("DejaVu", "B", str(_font_path(bold=True)))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 16)
    title = (
        t(N_("Mammography report"))
        if content.template is Template.MAMMO
        else t(N_("Chest X-ray report"))
    )
    pdf.multi_cell(0, 9, title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 10)
    header = [
        (t(N_("Patient")), patient_name),
        (t(N_("Patient ID")), patient_id),
        (t(N_("Study date")), study_date),
        (t(N_("Accession number")), accession),
        (t(N_("Description")), description),
        (t(N_("Version")), str(version) + (" (" + t(N_("amended")) + ")" if amended else "")),
    ]
    for label, value in header:
        pdf.set_font("DejaVu", "B", 10)
        pdf.cell(45, 6, label)
        pdf.set_font("DejaVu", "", 10)
        pdf.multi_cell(0, 6, value or "—", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    for label, text in report_lines(content, language):
        pdf.set_font("DejaVu", "B", 11)
        pdf.multi_cell(0, 7, label, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "", 11)
        pdf.multi_cell(0, 6, text or "—", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
    pdf.ln(6)
    pdf.set_font("DejaVu", "", 10)
    signer = signed.full_name or signed.username
    when = local_time(signed.signed_at, signed.zone).strftime("%Y-%m-%d %H:%M")
    pdf.multi_cell(
        0,
        6,
        t(N_("Signed by %(name)s, %(when)s")) % {"name": signer, "when": when},
        new_x="LMARGIN",
        new_y="NEXT",
    )
    return bytes(pdf.output())


def build_encapsulated_pdf(
    *, evidence: Dataset, pdf: bytes, version: int, title: str, signed: SignedBy
) -> Dataset:
    """The PDF as an Encapsulated PDF instance (PS3.3 A.45.1) in ``evidence``'s study."""
    study_uid = str(evidence.StudyInstanceUID)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = report_uid("pdf", study_uid, version)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
        "InstitutionName",
    ):
        value = evidence.get(keyword)
        setattr(ds, keyword, value if value is not None else "")
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = report_uid("pdf-series", study_uid, 0)
    ds.SeriesNumber = PDF_SERIES_NUMBER
    ds.SeriesDescription = "Radiologist report (PDF)"
    ds.InstanceNumber = version
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = f"qamqor {__version__}"
    ds.ConversionType = "WSD"
    stamp = signed.signed_at
    ds.ContentDate = stamp.strftime("%Y%m%d")
    ds.ContentTime = stamp.strftime("%H%M%S")
    ds.AcquisitionDateTime = stamp.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title[:64]
    concept = Dataset()
    concept.CodeValue = "18748-4"
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = [concept]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def to_part10(dataset: Dataset) -> bytes:
    from pydicom import dcmwrite

    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
