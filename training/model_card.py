"""The model card: a Markdown page written next to each bundle by the training command."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from qamqor.ai.bundle import Manifest
from training.common import TaskSpec
from training.evaluate import Report

_NAMES = {
    "auc": "AUC, abnormal vs normal images",
    "localized_auc": "Localized AUC (area under LROC)",
    "sensitivity_at_90_specificity": "Sensitivity at 90% specificity",
    "top_finding_hit_rate": "Top finding on the lesion (abnormal images)",
    "malignant_vs_rest_auc": "AUC, malignant vs all other images",
}

_GROUP_TITLES = {
    "subtlety": "JSRT subtlety (1 = extremely subtle ... 5 = obvious); normals: all 65",
    "size": "Nodule size; normals: all 65",
    "state": "Nodule diagnosis; normals: all 65",
    "tissue": "Breast density (F fatty, G fatty-glandular, D dense); normals of the same density",
    "class": "Abnormality class; normals: all normal images",
    "severity": "Severity (B benign, M malignant); normals: all normal images",
}


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def render(
    *,
    spec: TaskSpec,
    manifest: Manifest,
    report: Report,
    environment: dict[str, str],
    command: str,
    bundle_bytes: int,
    extra_notes: str = "",
) -> str:
    m = manifest
    lines: list[str] = [
        f"# Model card: {m.name} {m.version}",
        "",
        f"Bundle `{m.file_name}` ({bundle_bytes / 1e6:.2f} MB), ONNX sha256 `{m.onnx_sha256}`, "
        f"created {m.created.isoformat()}.",
        "",
        "## Intended use",
        "",
        m.intended_use,
        "",
        "## Training data",
        "",
        m.training_data,
        "",
        f"Licence of the data: {m.license}",
        "",
        "## Model",
        "",
        f"A small fully-convolutional network (heat-map output, stride {m.output.stride}, "
        f"{_params(spec)} trainable parameters) trained from scratch by the project's own code "
        "(`training/`), with no third-party weights. It learns from crops: crops around the "
        "marked lesions (target: a Gaussian bump at the lesion centre, sized by the lesion), "
        "crops of background in the lung fields / breast and anywhere in the image, and "
        "hard negatives (the training images' own false peaks, mined twice during training). "
        "Applied to a whole image it gives a heat map; the image score is the heat map's "
        "maximum, calibrated to a probability by Platt scaling of the out-of-fold scores; "
        f"findings are the heat map's strongest peaks at least {m.findings.min_distance_mm:g} mm "
        "apart.",
        "",
        *_extras(spec),
        "",
        f"Input: the image is resampled to {m.input.pixel_spacing_mm:g} mm per pixel when the "
        f"spacing is known (otherwise its longer side to {m.input.reference_size} px), "
        f"grey levels standardised ({m.input.normalization.value}).",
    ]
    if m.input.canonical_laterality:
        lines.append(
            "Left breasts are mirrored so that every breast looks like a right one (chest wall on "
            "the left); findings are mirrored back."
        )
    lines += [
        "",
        "Training recipe (fixed in advance, identical in every fold and for the shipped model):",
        "",
        "```",
        *(f"{k} = {v}" for k, v in asdict(spec.config).items()),
        "```",
        "",
        "## Cross-validated figures",
        "",
        f"{report.n_folds}-fold cross-validation with patient-level folds "
        f"({report.n_images} images, {report.n_abnormal} abnormal, {report.n_normal} normal, "
        f"{report.n_patients} patients), stratified by abnormal/normal; each fold's model "
        "never saw its test patients; out-of-fold predictions pooled. 95% confidence intervals "
        "by bootstrap over patients (2000 resamples). **The shipped model was then retrained on "
        "all images with the same recipe; it has no held-out figures of its own.**",
        "",
        "The localized AUC is the area under the LROC curve: over all pairs (abnormal image, "
        "normal image), the share where the abnormal image scores higher *and* its top finding "
        f"lies within max(lesion radius, {spec.localization_floor_mm:g} mm) of a marked lesion "
        "centre, ties counting half.",
        "",
        "| figure | value | 95% CI |",
        "|---|---:|---:|",
    ]
    for key, value in report.metrics.items():
        low, high = report.intervals.get(key, (float("nan"), float("nan")))
        lines.append(f"| {_NAMES.get(key, key)} | {_fmt(value)} | {_fmt(low)} - {_fmt(high)} |")
    lines += ["", "### By subgroup", ""]
    lines.append(
        "Sensitivity uses the 90%-specificity threshold set on all normal images; "
        "'hit' is the share of abnormal images whose top finding lies on the lesion."
    )
    for key, rows in report.tables.items():
        lines += [
            "",
            f"**{_GROUP_TITLES.get(key, key)}**",
            "",
            "| group | abnormal | normal | AUC | localized AUC | sens. @ 90% spec. | hit |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row.value} | {row.n_abnormal} | {row.n_normal} | {_fmt(row.auc)} | "
                f"{_fmt(row.localized_auc)} | {_fmt(row.sensitivity_at_90_specificity)} | "
                f"{_fmt(row.hit_rate)} |"
            )
    lines += [
        "",
        "## Operating points",
        "",
        "| name | threshold (probability) | specificity | sensitivity | |",
        "|---|---:|---:|---:|---|",
    ]
    for name, point in m.operating_points.items():
        lines.append(
            f"| {name} | {point.threshold:.3f} | {point.specificity:.3f} | "
            f"{point.sensitivity:.3f} | {point.description} |"
        )
    lines += [
        "",
        "Thresholds and calibration come from the cross-validation models' out-of-fold scores; "
        "the shipped model, trained the same way on all images, is assumed to score on the same "
        "scale (not verifiable without new data).",
        "",
        "## Limitations and caveats",
        "",
        *_caveats(spec),
        "",
        "## Reproduce",
        "",
        "```bash",
        "pip install -e '.[train]'",
        command,
        "```",
        "",
        f"Run times on this machine: cross-validation {_minutes(report, 'cross_validation')}, "
        f"final model {_minutes(report, 'final_training')}, total {_minutes(report, 'total')} "
        f"({', '.join(f'{k} {v}' for k, v in environment.items())}).",
        "Same seed, same library versions and same thread count give the same weights.",
    ]
    if extra_notes:
        lines += ["", extra_notes]
    return "\n".join(lines) + "\n"


def _extras(spec: TaskSpec) -> list[str]:
    lines = []
    if spec.config.synthetic_fraction:
        lines.append(
            f"{spec.config.synthetic_fraction:.0%} of the training crops carry a simulated "
            "lesion (the projection of a sphere or ellipsoid, soft-edged, with a contrast and "
            "size drawn from ranges measured on the real lesions"
            + (
                ", or a cluster of calcification-like specks"
                if spec.config.synthetic_calcification_share
                else ""
            )
            + ") placed at random in the tissue of any training image: many more examples of "
            "what a lesion looks like, on backgrounds of every kind."
        )
    if spec.config.field_gating:
        if spec.task.value == "chest":
            lines.append(
                "A second small network, trained on the JSRT lung and heart masks with "
                "whole-image context, gates the heat map (its log-probability is added to the "
                "logits), so that findings below the diaphragm or outside the chest are "
                "suppressed."
            )
        else:
            lines.append(
                "A second small network, trained on breast masks (the largest bright region of "
                "each film) with whole-image context, gates the heat map (its log-probability "
                "is added to the logits), so that findings on film labels and background are "
                "suppressed."
            )
    if spec.config.ensemble > 1:
        lines.append(
            f"The heat network is an ensemble of {spec.config.ensemble}: the same recipe trained "
            "with different seeds (different initial weights, crops and hard negatives), sharing "
            "the field network; their heat-map logits are averaged inside the exported ONNX "
            "graph."
        )
    if spec.config.flip_averaging:
        lines.append(
            "Each heat map is the average of the image's and its mirror image's (test-time "
            "augmentation, inside the exported ONNX graph)."
        )
    return [" ".join(lines)] if lines else []


def _minutes(report: Report, key: str) -> str:
    return f"{report.seconds.get(key, 0.0) / 60:.1f} min"


def _params(spec: TaskSpec) -> str:
    from training.common import FieldNet, HeatNet

    models: list[Any] = [HeatNet(spec.config.width) for _ in range(spec.config.ensemble)]
    if spec.config.field_gating:
        models.append(FieldNet())
    return f"{sum(p.numel() for m in models for p in m.parameters()):,}"


def _caveats(spec: TaskSpec) -> list[str]:
    common = [
        "- Research model, not a medical device. It orders a worklist; it does not diagnose.",
        "- Small data: a few hundred images from one source. Figures on other scanners, "
        "populations and digital detectors will differ, probably for the worse.",
        "- The training recipe (network size, crop size, steps, sampling shares) was fixed by "
        "the developer, who had seen cross-validated results of earlier recipes on this same data "
        "during development; no inner CV was run. The figures may therefore be slightly "
        "optimistic. The held-out part of the data (outside this repository) is the real test.",
        "- The image score is a heat-map maximum: one strong false peak makes a normal image "
        "look suspicious, and the score does not add up evidence from several lesions.",
    ]
    if spec.task.value == "chest":
        return [
            *common,
            "- JSRT's image labels are confounded with how the films were acquired (a grey-level "
            "histogram alone gives AUC 0.71): the plain AUC can reward such shortcuts, the "
            "localized AUC much less. Each image is standardised (z-score) and the network only "
            "sees ~130 px of context.",
            "- 224 x 224 (1.6 mm pixels) loses small and faint nodules that radiologists see on "
            "the full 2048 px films (their ROC areas: 0.57 for subtlety 1 to 0.99 for 5).",
            "- JSRT has at most one nodule per image and no other disease; real clinics have "
            "many other findings (the model was never shown them).",
        ]
    return [
        *common,
        "- mini-MIAS: digitised screen-film MLO views from the UK in the early 1990s, reduced "
        f"to 200 micron pixels; the model works at {spec.input.pixel_spacing_mm:g} mm, where "
        "individual microcalcifications are invisible.",
        "- Each view is scored alone; asymmetries are judged without the other breast, and the "
        "per-breast / per-study combination is left to the pipeline.",
        "- Film labels and markers are part of the images; the model was shown them as "
        "background, but unusual markers may still draw findings.",
    ]
