"""Routing by the DICOM header (and the image where the header is silent), on synthetic and
real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import CR, CT, DX_PROCESSING, MG_PROCESSING, chest, make_dataset, mammogram
from pydicom import Dataset, dcmread

from qamqor.ai import Task
from qamqor.ai.routing import RouteKind, guess_task_from_image, looks_like_chest, route


def _code(value: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = value
    return item


@pytest.mark.parametrize(
    ("dataset", "task", "view", "laterality"),
    [
        (chest(), Task.CHEST, "PA", ""),
        (chest(ViewPosition="AP", sop_class=CR, modality="CR"), Task.CHEST, "AP", ""),
        (chest(BodyPartExamined="THORAX"), Task.CHEST, "PA", ""),
        (mammogram(laterality="L", view="CC"), Task.MAMMO, "CC", "L"),
        (mammogram(laterality="R", view="MLO"), Task.MAMMO, "MLO", "R"),
        # laterality at series level only, and a digitised film as a CR image of the breast
        (
            make_dataset(
                sop_class=CR,
                modality="CR",
                BodyPartExamined="BREAST",
                ViewPosition="MLO",
                Laterality="R",
            ),
            Task.MAMMO,
            "MLO",
            "R",
        ),
    ],
)
def test_chest_and_mammography_are_routed(
    dataset: Dataset, task: Task, view: str, laterality: str
) -> None:
    routed = route(dataset)
    assert routed.kind is RouteKind.ANALYSE
    assert (routed.task, routed.view, routed.laterality) == (task, view, laterality)


def test_view_code_sequence_stands_in_for_view_position() -> None:
    ds = mammogram(view="")
    del ds.ViewPosition
    ds.ViewCodeSequence = [_code("399368009")]
    assert route(ds).view == "MLO"
    spot = mammogram(view="CC")
    item = _code("399162004")
    item.ViewModifierCodeSequence = [_code("399055006")]  # spot compression
    spot.ViewCodeSequence = [item]
    assert "spot compression" in route(spot).reason.english()


@pytest.mark.parametrize(
    ("dataset", "reason"),
    [
        (mammogram(sop_class=MG_PROCESSING), "for processing"),
        (mammogram(PresentationIntentType="FOR PROCESSING"), "for processing"),
        (chest(sop_class=DX_PROCESSING), "for processing"),
        (mammogram(view="XCCL"), "view XCCL is not analysed"),
        (mammogram(laterality="B", Laterality=""), "no laterality"),
        (chest(ViewPosition="LL"), "lateral chest view"),
        (chest(BodyPartExamined="HAND"), "body part HAND"),
        (make_dataset(sop_class=CT, modality="CT"), "not a projection radiograph"),
        (make_dataset(sop_class="1.2.840.10008.5.1.4.1.1.7", modality="OT"), "modality OT"),
        (chest(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), "localizer"),
    ],
)
def test_what_is_left_alone_says_why(dataset: Dataset, reason: str) -> None:
    routed = route(dataset)
    assert routed.kind is RouteKind.SKIP
    assert reason in routed.reason.english()


def test_a_silent_header_lets_the_image_decide() -> None:
    silent = make_dataset(sop_class=CR, modality="CR")
    assert route(silent).kind is RouteKind.CHECK_IMAGE
    described = make_dataset(sop_class=CR, modality="CR", StudyDescription="ОГК прямая")
    assert route(described).kind is RouteKind.CHECK_IMAGE  # chest words, but no view
    assert route(described).task is Task.CHEST
    # 43 x 35 cm at 0.2 mm: a chest detector; a 10 x 8 cm hand image is not
    assert looks_like_chest((2150, 1750), (0.2, 0.2))
    assert not looks_like_chest((500, 400), (0.2, 0.2))
    assert not looks_like_chest((3000, 1000), None)  # a long-leg or spine image


def test_plain_images_are_told_apart(shared_dicom_dir: Path) -> None:
    from qamqor.ai.analysis import read_png

    data = shared_dicom_dir.parent
    mias = sorted((data / "mini-mias" / "images").glob("*.png"))[:40]
    jsrt = sorted((data / "jsrt224" / "images").glob("*.png"))[:40]
    if not mias or not jsrt:
        pytest.skip("mini-MIAS or JSRT images missing")
    assert sum(guess_task_from_image(read_png(p)) is Task.MAMMO for p in mias) >= 38
    assert all(guess_task_from_image(read_png(p)) is Task.CHEST for p in jsrt)
    assert guess_task_from_image(np.full((64, 64), 0.5, np.float32)) is Task.CHEST


def test_real_files_are_routed(shared_dicom_dir: Path) -> None:
    def routed(name: str):  # type: ignore[no-untyped-def]
        return route(dcmread(shared_dicom_dir / name, stop_before_pixels=True))

    mg = routed("MG1_J2KI.dcm")  # a digitised film: Secondary Capture, Modality RG, BREAST
    assert (mg.kind, mg.task, mg.view, mg.laterality) == (
        RouteKind.ANALYSE,
        Task.MAMMO,
        "MLO",
        "L",
    )
    rg = routed("RG1_J2KI.dcm")
    assert (rg.kind, rg.task, rg.view) == (RouteKind.ANALYSE, Task.CHEST, "PA")
    assert routed("RG2_J2KI.dcm").reason.english() == "body part HIP is not analysed"
    assert routed("RG3_RLE.dcm").kind is RouteKind.SKIP
    assert routed("CT1_J2KI.dcm").kind is RouteKind.SKIP
