"""Honest figures from out-of-fold predictions.

- AUC: abnormal vs normal images, ties counting half (Mann-Whitney).
- Localized AUC (area under the LROC curve): over all pairs (abnormal image, normal image), the
  share where the abnormal image scores higher AND its top finding lies on a marked lesion
  (within max(lesion radius, 10 mm) of its centre), ties counting half. A lesion with no marked
  position needs no localization.
- 95% confidence intervals: percentile bootstrap over patients (both breasts of a woman go
  together), 2000 resamples.
- Sensitivity at 90% specificity: the threshold is the 90th percentile of normal images' scores.
- Malignant vs rest: images with a malignant lesion against all other images.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Prediction:
    """An out-of-fold prediction for one image."""

    case_id: str
    patient: str
    abnormal: bool
    malignant: bool
    score: float
    """Heat-map maximum (logit); only its order matters for the figures."""
    hit: bool
    """The top finding lies on a marked lesion (True for images with no positioned lesion)."""
    x: float = float("nan")
    y: float = float("nan")
    """The top finding, in model pixels."""
    groups: dict[str, str] = field(default_factory=dict)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve, ties counting half; NaN when a side is empty."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (positive.size * negative.size))


def localized_auc(positive: np.ndarray, hits: np.ndarray, negative: np.ndarray) -> float:
    """Area under the LROC curve: pairs won only when the abnormal image's top finding hits."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    hits = np.asarray(hits, bool)
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    greater = (positive[:, None] > negative[None, :]) & hits[:, None]
    ties = (positive[:, None] == negative[None, :]) & hits[:, None]
    return float((greater.sum() + 0.5 * ties.sum()) / (positive.size * negative.size))


def threshold_at_specificity(
    positive: np.ndarray, negative: np.ndarray, specificity: float
) -> tuple[float, float, float]:
    """(threshold, sensitivity, achieved specificity): positive means score > threshold."""
    negative = np.sort(np.asarray(negative, float))
    if negative.size == 0:
        return float("nan"), float("nan"), float("nan")
    threshold = float(np.quantile(negative, specificity, method="higher"))
    sensitivity = float((np.asarray(positive) > threshold).mean()) if len(positive) else np.nan
    return threshold, sensitivity, float((negative <= threshold).mean())


def _arrays(predictions: Sequence[Prediction]) -> dict[str, np.ndarray]:
    return {
        "score": np.array([p.score for p in predictions], float),
        "abnormal": np.array([p.abnormal for p in predictions], bool),
        "malignant": np.array([p.malignant for p in predictions], bool),
        "hit": np.array([p.hit for p in predictions], bool),
    }


def core_metrics(predictions: Sequence[Prediction]) -> dict[str, float]:
    a = _arrays(predictions)
    pos, neg = a["abnormal"], ~a["abnormal"]
    _, sens90, _ = threshold_at_specificity(a["score"][pos], a["score"][neg], 0.9)
    return {
        "auc": auc(a["score"][pos], a["score"][neg]),
        "localized_auc": localized_auc(a["score"][pos], a["hit"][pos], a["score"][neg]),
        "sensitivity_at_90_specificity": sens90,
        "top_finding_hit_rate": float(a["hit"][pos].mean()) if pos.any() else float("nan"),
        "malignant_vs_rest_auc": auc(a["score"][a["malignant"]], a["score"][~a["malignant"]]),
    }


def bootstrap(
    predictions: Sequence[Prediction],
    metric: Callable[[Sequence[Prediction]], dict[str, float]],
    *,
    n: int = 2000,
    seed: int = 7,
) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals, resampling patients (all of a patient's images together)."""
    by_patient: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        by_patient[p.patient].append(p)
    patients = sorted(by_patient)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(n):
        chosen = rng.integers(len(patients), size=len(patients))
        resampled = [p for k in chosen for p in by_patient[patients[k]]]
        for key, value in metric(resampled).items():
            if np.isfinite(value):
                samples[key].append(value)
    return {
        key: (float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975)))
        for key, values in samples.items()
    }


@dataclass
class SubgroupRow:
    key: str
    value: str
    n_abnormal: int
    n_normal: int
    auc: float
    localized_auc: float
    sensitivity_at_90_specificity: float
    hit_rate: float


def subgroups(
    predictions: Sequence[Prediction],
    key: str,
    *,
    normals_by_group: bool,
) -> list[SubgroupRow]:
    """Per-subgroup figures.

    ``normals_by_group``: compare a subgroup's abnormal images with the normal images of the same
    subgroup (breast density: normals have one too); otherwise with all normal images (JSRT
    subtlety, abnormality class: normals have none). The 90%-specificity threshold is always the
    one set on all normal images.
    """
    a = _arrays(predictions)
    threshold, _, _ = threshold_at_specificity(
        a["score"][a["abnormal"]], a["score"][~a["abnormal"]], 0.9
    )
    values = sorted({p.groups[key] for p in predictions if p.abnormal and key in p.groups})
    rows = []
    for value in values:
        pos = [p for p in predictions if p.abnormal and p.groups.get(key) == value]
        neg = [
            p
            for p in predictions
            if not p.abnormal and (not normals_by_group or p.groups.get(key) == value)
        ]
        ps = np.array([p.score for p in pos])
        ns = np.array([p.score for p in neg])
        hits = np.array([p.hit for p in pos])
        rows.append(
            SubgroupRow(
                key=key,
                value=value,
                n_abnormal=len(pos),
                n_normal=len(neg),
                auc=auc(ps, ns),
                localized_auc=localized_auc(ps, hits, ns),
                sensitivity_at_90_specificity=float((ps > threshold).mean()),
                hit_rate=float(hits.mean()),
            )
        )
    return rows


@dataclass
class Report:
    """Every figure of one cross-validation."""

    n_images: int
    n_abnormal: int
    n_normal: int
    n_patients: int
    n_folds: int
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    tables: dict[str, list[SubgroupRow]]
    seconds: dict[str, float] = field(default_factory=dict)

    def manifest_metrics(self) -> dict[str, float | int | str]:
        """The headline figures, for the bundle's manifest."""
        out: dict[str, float | int | str] = {
            "method": (
                f"{self.n_folds}-fold patient-level cross-validation, out-of-fold predictions "
                "pooled; 95% CI by bootstrap over patients; final model retrained on all images"
            ),
            "images": self.n_images,
            "abnormal_images": self.n_abnormal,
            "normal_images": self.n_normal,
            "patients": self.n_patients,
        }
        for key, value in self.metrics.items():
            out[key] = round(value, 4)
            if key in self.intervals:
                low, high = self.intervals[key]
                out[f"{key}_ci95_low"] = round(low, 4)
                out[f"{key}_ci95_high"] = round(high, 4)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "n_abnormal": self.n_abnormal,
            "n_normal": self.n_normal,
            "n_patients": self.n_patients,
            "n_folds": self.n_folds,
            "metrics": self.metrics,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "tables": {k: [row.__dict__ for row in rows] for k, rows in self.tables.items()},
            "seconds": self.seconds,
        }


def report(
    predictions: Sequence[Prediction],
    *,
    n_folds: int,
    group_keys: Sequence[str],
    density_keys: Sequence[str] = (),
    n_bootstrap: int = 2000,
) -> Report:
    return Report(
        n_images=len(predictions),
        n_abnormal=sum(p.abnormal for p in predictions),
        n_normal=sum(not p.abnormal for p in predictions),
        n_patients=len({p.patient for p in predictions}),
        n_folds=n_folds,
        metrics=core_metrics(predictions),
        intervals=bootstrap(predictions, core_metrics, n=n_bootstrap),
        tables={
            key: subgroups(predictions, key, normals_by_group=key in density_keys)
            for key in group_keys
        },
    )


def summarise_fold(predictions: Sequence[Prediction]) -> str:
    """One line for the progress log: figures only, no image or patient identifiers."""
    m = core_metrics(predictions)
    return (
        f"AUC {m['auc']:.3f}  localized AUC {m['localized_auc']:.3f}  "
        f"hit rate {m['top_finding_hit_rate']:.2f}  (n={len(predictions)})"
    )


def print_report(console: Any, title: str, rep: Report) -> None:
    """A rich summary table of the cross-validated figures."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for key, value in rep.metrics.items():
        low, high = rep.intervals.get(key, (float("nan"), float("nan")))
        table.add_row(key.replace("_", " "), f"{value:.3f}", f"{low:.3f} - {high:.3f}")
    console.print(table)
    for key, rows in rep.tables.items():
        sub = Table(title=f"by {key}")
        for column in ("group", "abnormal", "normal", "AUC", "loc. AUC", "sens@90%spec", "hit"):
            sub.add_column(column, justify="right")
        for row in rows:
            sub.add_row(
                row.value,
                str(row.n_abnormal),
                str(row.n_normal),
                f"{row.auc:.3f}",
                f"{row.localized_auc:.3f}",
                f"{row.sensitivity_at_90_specificity:.2f}",
                f"{row.hit_rate:.2f}",
            )
        console.print(sub)
