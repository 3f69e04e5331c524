"""Inference time per image and images per hour, on the CPU, for each analyser present.

For every bundle in the repository's ``models/`` folder (and any ``--model FILE``), on a real
DICOM image of its task from ``../shared/data/dicom`` (RG1 chest CR for chest, MG1 mammogram
for mammography; ``--image`` overrides):

- **whole image**: read the file, decode (JPEG 2000), Modality/VOI LUT, route, preprocess,
  onnxruntime, findings: what a worker does per image before writing results;
- **model only**: onnxruntime on the prepared tensor.

Each is run ``--repeat`` times after one warm-up run; the median and the 95th percentile are
printed, and images per hour = 3600 / median (one image at a time, ``--threads`` onnxruntime
threads). Run from the repository root: ``.venv/bin/python -m bench.ai_inference``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from bench.common import machine_description, percentile

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("QAMQOR_SHARED_DATA_DIR", REPO.parent / "shared" / "data"))
DEFAULT_IMAGES = {"chest": "dicom/RG1_J2KI.dcm", "mammo": "dicom/MG1_J2KI.dcm"}


def measure(bundle: Path, image: Path, *, repeat: int, threads: int) -> dict[str, float | str]:
    from pydicom import dcmread

    from qamqor.ai.analysis import analyse_dataset
    from qamqor.ai.dicom_input import load_dicom_image
    from qamqor.ai.preprocess import prepare
    from qamqor.ai.registry import FixedModels

    models = FixedModels([bundle], threads=threads)
    (installed,) = models.installed()
    task = installed.manifest.task
    analyser = models.analyser(task)
    assert analyser is not None

    def whole() -> None:
        outcome = analyse_dataset(dcmread(image), models, task=task)
        if outcome.result is None:
            raise RuntimeError(f"{image.name} was not analysed: {outcome.reason}")

    loaded = load_dicom_image(dcmread(image))
    mirror = task.value == "mammo" and loaded.chest_wall == "right"
    prepared = prepare(
        loaded.pixels, spec=analyser.manifest.input, spacing=loaded.spacing, mirror=mirror
    )

    def model_only() -> None:
        analyser.heatmap(prepared)

    figures: dict[str, float | str] = {
        "model": installed.manifest.model_id,
        "image": f"{image.name} {loaded.shape[1]}x{loaded.shape[0]}",
        "input": f"{prepared.width}x{prepared.height}",
    }
    for name, function in (("whole", whole), ("model", model_only)):
        function()  # warm-up
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
        figures[f"{name}_median"] = statistics.median(times)
        figures[f"{name}_p95"] = percentile(times, 0.95)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", default=[], help="bundle file")
    parser.add_argument("--image", type=Path, help="DICOM image to use for every bundle")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    args = parser.parse_args(argv)

    from qamqor.ai.bundle import read_bundle

    bundles = sorted((REPO / "models").glob("*.qmodel")) + list(args.model)
    print(f"Machine: {machine_description()}; onnxruntime threads: {args.threads}")
    if not bundles:
        print("No analyser present (no bundle in models/ and no --model).")
        return 1
    tasks_seen = set()
    rows = []
    for bundle in bundles:
        manifest = read_bundle(bundle).manifest
        tasks_seen.add(manifest.task.value)
        image = args.image or SHARED / DEFAULT_IMAGES[manifest.task.value]
        if not image.is_file():
            print(f"{manifest.model_id}: no test image ({image}); skipped")
            continue
        rows.append(measure(bundle, image, repeat=args.repeat, threads=args.threads))
    for task in sorted(set(DEFAULT_IMAGES) - tasks_seen):
        print(f"No {task} analyser present (no {task} bundle in models/).")
    header = (
        f"{'model':24} {'image':26} {'input':9} {'whole image median/p95':>23} "
        f"{'images/h':>9} {'model only median/p95':>22}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        whole_median = float(row["whole_median"])
        print(
            f"{row['model']!s:24} {row['image']!s:26} {row['input']!s:9} "
            f"{whole_median * 1000:10.0f} / {float(row['whole_p95']) * 1000:5.0f} ms "
            f"{3600 / whole_median:9.0f} "
            f"{float(row['model_median']) * 1000:9.1f} / {float(row['model_p95']) * 1000:5.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
