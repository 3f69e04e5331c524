"""Chest radiographs, lung nodules: JSRT (224 x 224 px, 1.6 mm pixels).

    .venv/bin/python -m training.chest --data ../shared/data --out models/

Five-fold cross-validation (each image is a patient), then the shipped model on all images,
its bundle ``models/chest-nodule-<version>.qmodel`` and model card
``models/chest-nodule-<version>.md``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from qamqor.ai.bundle import InputSpec, Normalization, Task
from qamqor.ai.preprocess import prepare, resample
from training.common import Case, Lesion, TaskSpec, TrainConfig
from training.runner import main_for

ORIGINAL_SIZE = 2048
ORIGINAL_SPACING_MM = 0.175
SIZE = 224
SPACING_MM = ORIGINAL_SPACING_MM * ORIGINAL_SIZE / SIZE  # 1.6 mm

SPEC = TaskSpec(
    name="chest-nodule",
    task=Task.CHEST,
    labels=["lung nodule"],
    input=InputSpec(
        pixel_spacing_mm=SPACING_MM,
        reference_size=SIZE,
        max_size=512,
        normalization=Normalization.ZSCORE,
        size_multiple=8,
    ),
    stride=4,
    min_distance_mm=20.0,
    localization_floor_mm=10.0,
    intended_use=(
        "Research model: triage of adult PA chest radiographs by suspicion of a solitary lung "
        "nodule, pointing at the most suspicious place. Worklist ordering only; not a diagnosis "
        "and not a medical device. Trained at 1.6 mm per pixel: small and subtle nodules are "
        "often missed."
    ),
    training_data=(
        "JSRT database (Shiraishi et al., AJR 2000;174:71-74), 173 PA chest films downsampled "
        "to 224 x 224: 108 with one nodule (71 malignant, 37 benign), 65 without."
    ),
    license="Research and education use (JSRT terms); cite the JSRT paper.",
    group_keys=("subtlety", "size", "state"),
    config=TrainConfig(
        width=16,
        crop=64,
        batch=32,
        iterations=1200,
        synthetic_fraction=0.3,
        rotate_degrees=15.0,
        max_zoom=1.15,
        field_gating=True,
        flip_averaging=True,
        ensemble=2,
    ),
)


DEVELOPMENT = """## How the recipe was chosen

Recipes cross-validated on these same images during development (same network, same folds,
same seed). Choosing among them used the test folds, so the shipped figures carry some selection
optimism: eight recipes / variants in all were looked at (three for 0.1.0; for 0.2.0 one
trained recipe, two inference-time variants computed from its fold models, and afterwards
ensembles of three and four seeds), each a clear step, not a search.

| recipe | AUC | localized AUC | top finding on the nodule |
|---|---:|---:|---:|
| crops of nodules and background, hard negatives | 0.665 | 0.255 | 0.29 |
| + simulated nodules, rotation and scale | 0.652 | 0.278 | 0.32 |
| + lung-field gating, mirror averaging (0.1.0, as recorded in its card) | 0.714 | 0.439 | 0.53 |
| the 0.1.0 recipe retrained here (member 1 of the 0.2.0 folds, same seeds) | 0.729 | 0.411 | 0.52 |
| the same recipe, second seed (member 2 alone) | 0.689 | 0.420 | 0.49 |
| **ensemble of the two seeds (0.2.0, shipped)** | 0.734 | 0.470 | 0.56 |
| 0.2.0 + vertical-flip averaging at inference (not shipped) | 0.747 | 0.448 | 0.50 |
| 0.2.0, score = maximum of the heat map smoothed by one cell (not shipped) | 0.700 | 0.391 | 0.46 |
| ensemble of three seeds (looked at after 0.2.0 was built; not shipped) | 0.742 | 0.453 | 0.52 |
| ensemble of four seeds (likewise) | 0.745 | 0.460 | 0.51 |

The 0.1.0 recipe did not reproduce its recorded figures bit for bit on this machine (0.411
instead of 0.439 localized AUC, with the same seeds and, as far as checked, the same
computation: most likely a different CPU or library build changing the floating-point rounding,
which training amplifies; not investigated further). The seed-to-seed spread of a
single model is therefore about +-0.03 in localized AUC. Averaging two seeds gained +0.058
localized AUC over member 1 alone (paired bootstrap over patients, 95% CI +0.016 to +0.103) and
+0.050 over member 2 alone (+0.019 to +0.084); against the 0.1.0 card's figure the gain is
+0.031.
Three and four seeds (members 3 and 4 trained per fold exactly as `ensemble = 4` would, and
averaged with the fold's members 1 and 2) did not add to it: 0.453 and 0.460, within the
noise of 0.470. Averaging seeds is worth about +0.04 to +0.05 over a single model; the 0.470
of two seeds is probably a little lucky, and about 0.46 is the better estimate of this recipe.

Not tried, for the compute at hand (two shared CPU cores): finer pixels. The data here are the
224 px JSRT copies (1.6 mm), so a finer model grid would only interpolate; the 2048 px
originals (0.175 mm) would be needed to see the 5-10 mm nodules that this model misses.
"""


def _size_band(size_mm: float) -> str:
    if size_mm <= 10:
        return "a <=10 mm"
    if size_mm <= 15:
        return "b 11-15 mm"
    if size_mm <= 20:
        return "c 16-20 mm"
    return "d >20 mm"


def load_cases(data_dir: Path) -> list[Case]:
    """JSRT images as cases, preprocessed as at inference time."""
    root = Path(data_dir) / "jsrt224"
    if not (root / "labels.csv").is_file():
        raise SystemExit(f"JSRT data not found under {root} (see ../shared/data/README.md)")
    scale = SIZE / ORIGINAL_SIZE
    cases = []
    with (root / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        pixels = np.asarray(Image.open(root / "images" / row["study_id"]).convert("L"))
        prepared = prepare(pixels, spec=SPEC.input, spacing=SPACING_MM)
        mask = np.asarray(Image.open(root / "masks" / row["study_id"]).convert("L")) > 0
        tissue = resample(mask.astype(np.float32), prepared.height, prepared.width) > 0.5
        lesions: list[Lesion] = []
        groups: dict[str, str] = {}
        if row["x"]:
            x = (float(row["x"]) + 0.5) * scale - 0.5
            y = (float(row["y"]) + 0.5) * scale - 0.5
            xm, ym = prepared.to_model(x, y)
            size_mm = float(row["size"])
            lesions.append(
                Lesion(
                    x=xm,
                    y=ym,
                    radius=size_mm / 2 / SPACING_MM * prepared.scale_x,
                    radius_mm=size_mm / 2,
                    kind="nodule",
                    malignant=row["state"] == "malignant",
                )
            )
            groups = {
                "subtlety": row["subtlety"],
                "size": _size_band(size_mm),
                "state": row["state"],
            }
        cases.append(
            Case(
                case_id=row["study_id"],
                patient=row["study_id"],
                prepared=prepared,
                lesions=lesions,
                tissue=tissue,
                malignant=row["state"] == "malignant",
                groups=groups,
            )
        )
    return cases


def main(argv: list[str] | None = None) -> None:
    main_for(SPEC, load_cases, argv, description=__doc__ or "", density_keys=(), notes=DEVELOPMENT)


if __name__ == "__main__":
    main()
