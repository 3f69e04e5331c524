"""Time from a study's last C-STORE to its AI priority being set, for 200 studies sent at once.

``qamqor serve`` (defaults: SQLite, the job workers inside it, ``study_stable_seconds`` 3, the
shipped chest bundle installed on first use) gets ``--studies`` chest radiographs, one
image per study (DX, PA, 12-bit, ``--size`` pixels square at 0.35 mm: a 35 cm detector,
explicit VR little endian), sent over ``--associations`` concurrent associations as fast as the
server takes them. Each sender notes the wall-clock time of the C-STORE response of each study's
image (its last image). The script then reads ``ai_studies.priority_at`` (the moment the
priority was committed; the SR and overlays are stored right after) for every study and prints
the latency's p50, p95 and maximum, and how long the whole batch took. Both clocks are this
machine's.

Run from the repository root: ``.venv/bin/python -m bench.ai_latency``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from bench.common import (
    CALLING_AE,
    HOST,
    _quiet_pynetdicom,
    _set_tcp_nodelay,
    machine_description,
    new_uid_prefix,
    percentile,
    sigterm_as_exit,
    temp_dir,
    wait_until,
)
from bench.servers import start_qamqor
from qamqor.pacs.dimse.fastpath import leave_responses_to_sender

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def write_studies(folder: Path, count: int, size: int) -> list[tuple[str, Path]]:
    """``count`` one-image chest studies; returns (study UID, file) pairs."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    prefix = new_uid_prefix()
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size] / size
    # Two dark lung fields in a brighter body, noise: enough structure for the model to run on.
    body = 0.55 + 0.1 * np.cos(3 * (xx - 0.5))
    lungs = (((xx - 0.3) / 0.16) ** 2 + ((yy - 0.45) / 0.3) ** 2 < 1) | (
        ((xx - 0.7) / 0.16) ** 2 + ((yy - 0.45) / 0.3) ** 2 < 1
    )
    base = np.where(lungs, 0.25, body)
    studies = []
    for index in range(count):
        pixels = np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = DX
        ds.SOPClassUID = DX
        ds.SOPInstanceUID = f"{prefix}{index}.3.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = f"{prefix}{index}.1"
        ds.SeriesInstanceUID = f"{prefix}{index}.2"
        ds.PatientName = f"BENCH^AI{index}"
        ds.PatientID = f"BENCH-{index}"
        ds.StudyDate, ds.StudyTime = "20260101", "080000"
        ds.AccessionNumber = f"AI{index}"
        ds.Modality = "DX"
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.35, 0.35]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = np.round(pixels * 4095).astype(np.uint16).tobytes()
        path = folder / f"study{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        studies.append((str(ds.StudyInstanceUID), path))
    return studies


def _sender(share: list[tuple[str, str]], port: int, barrier: Any, results: Any) -> None:
    """One association in its own process; puts (study UID, time of its C-STORE response)."""
    from pynetdicom import AE, evt

    _quiet_pynetdicom()
    stored: list[tuple[str, float]] = []
    errors: list[str] = []
    try:
        ae = AE(ae_title=CALLING_AE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        ae.add_requested_context(DX, "1.2.840.10008.1.2.1")
        barrier.wait(timeout=120)
        assoc = ae.associate(
            HOST, port, ae_title="QAMQOR", evt_handlers=[(evt.EVT_CONN_OPEN, _set_tcp_nodelay)]
        )
        if not assoc.is_established:
            errors.append("association not established")
        else:
            leave_responses_to_sender(assoc)
            try:
                for uid, path in share:
                    status = assoc.send_c_store(path)
                    if status and status.Status == 0:
                        stored.append((uid, time.time()))
                    else:
                        errors.append(f"C-STORE of {uid} failed")
            finally:
                assoc.release()
    except Exception as exc:  # reported to the parent, which fails the run
        errors.append(f"{type(exc).__name__}: {exc}")
    results.put((stored, errors))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument(
        "--stable-seconds",
        type=float,
        default=3.0,
        help="QAMQOR_STUDY_STABLE_SECONDS (the default is 3)",
    )
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    print(f"Machine: {machine_description()}")
    with sigterm_as_exit(), temp_dir("qamqor-ai-latency") as workdir:
        studies = write_studies(workdir, args.studies, args.size)
        with start_qamqor(
            workdir, settings={"QAMQOR_STUDY_STABLE_SECONDS": str(args.stable_seconds)}
        ) as server:
            dicom_port = server.dicom_port
            wait_until(lambda: threading.active_count() == 1, timeout=10, what="client threads")
            context = multiprocessing.get_context("fork")
            barrier = context.Barrier(args.associations + 1)
            results = context.Queue()
            pairs = [(uid, str(path)) for uid, path in studies]
            shares = [pairs[i :: args.associations] for i in range(args.associations)]
            senders = [
                context.Process(target=_sender, args=(share, dicom_port, barrier, results))
                for share in shares
            ]
            for sender in senders:
                sender.start()
            barrier.wait(timeout=120)
            started = time.time()
            stored_at: dict[str, float] = {}
            errors: list[str] = []
            for _ in senders:
                stored, failed = results.get(timeout=args.timeout)
                stored_at.update(stored)
                errors.extend(failed)
            sent_in = time.time() - started
            for sender in senders:
                sender.join(timeout=30)
            if errors:
                print("Sending failed:", "; ".join(errors[:5]))
                return 1
            engine = sa.create_engine(server.database_url)
            finished: dict[str, float] = {}
            deadline = time.time() + args.timeout
            while len(finished) < len(stored_at) and time.time() < deadline:
                with engine.connect() as connection:
                    rows = connection.execute(
                        sa.text(
                            "SELECT study_instance_uid, priority_at, priority FROM ai_studies "
                            "WHERE priority_at IS NOT NULL AND priority <> ''"
                        )
                    ).all()
                for uid, priority_at, _priority in rows:
                    if uid in stored_at and uid not in finished:
                        finished[uid] = _timestamp(priority_at)
                time.sleep(0.5)
            with engine.connect() as connection:
                priorities = dict(
                    connection.execute(
                        sa.text("SELECT priority, count(*) FROM ai_studies GROUP BY priority")
                    ).all()
                )
            engine.dispose()
    latencies = [finished[uid] - stored_at[uid] for uid in finished]
    missing = len(stored_at) - len(finished)
    print(
        f"{len(stored_at)} studies ({args.size}x{args.size} DX chest, 1 image each) sent over "
        f"{args.associations} associations in {sent_in:.1f} s; study_stable_seconds "
        f"{args.stable_seconds:g}; job workers: 2 threads inside qamqor serve (SQLite)"
    )
    if latencies:
        print(
            "last C-STORE -> priority set: "
            f"p50 {percentile(latencies, 0.5):.1f} s, p95 {percentile(latencies, 0.95):.1f} s, "
            f"max {max(latencies):.1f} s; all done {max(finished.values()) - started:.1f} s "
            f"after the first image was sent"
        )
    print(f"priorities: {priorities}")
    if missing:
        print(f"{missing} studies got no priority within {args.timeout:.0f} s")
        return 1
    return 0


def _timestamp(value: Any) -> float:
    """A ``priority_at`` as read from SQLite (text) or a datetime, as a UNIX time (UTC)."""
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


if __name__ == "__main__":
    sys.exit(main())
