"""Storing several instances at once, on SQLite and PostgreSQL: ``store_instances`` (STOW-RS,
``qamqor import``), group commit of concurrent stores (DIMSE), and the DICOM node's reactors.

Each instance keeps the guarantees of a store of its own: its file is durable and its row
committed before its outcome is reported, a second copy changes nothing, and a failure is its
own, with its reason.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.dsutils import create_file_meta
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select, text
from sqlalchemy.exc import DataError

from qamqor.pacs.dicomweb.stow import GROUP_PARTS
from qamqor.pacs.dimse import DicomNode
from qamqor.pacs.dimse.handlers import file_meta_bytes, set_tcp_nodelay
from qamqor.pacs.models import Instance
from qamqor.pacs.parsing import IndexValues, ParsedInstance, parse_part10
from qamqor.pacs.query import Level, search
from qamqor.pacs.service import StoreOutcome, StoreResult
from qamqor.runtime import Runtime
from tests.conftest import LiveServer, free_port


def ct(study: str, series: str, number: int, **changes: str) -> Dataset:
    """A copy of pydicom's CT_small with new UIDs (and ``changes``)."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def encoded(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def parsed(ds: Dataset) -> ParsedInstance:
    return parse_part10(encoded(ds))


class _WithNul(IndexValues):
    """Index values with a NUL in one text column: a row PostgreSQL refuses (SQLite takes
    it). The parser drops NULs from the index's values; these come past it."""

    __slots__ = ("_keyword",)

    def __init__(self, dataset: Dataset, keyword: str) -> None:
        super().__init__(dataset)
        self._keyword = keyword

    def text(self, keyword: str, limit: int) -> str:
        return "A\x00P" if keyword == self._keyword else super().text(keyword, limit)


def refused_by_postgres(ds: Dataset, keyword: str) -> ParsedInstance:
    instance = parsed(ds)
    return replace(instance, values=_WithNul(instance.dataset, keyword))


def staging_is_empty(runtime: Runtime) -> bool:
    return not list(runtime.archive.storage.staging.iterdir())  # type: ignore[attr-defined]


def study_counts(runtime: Runtime) -> dict[str, tuple[int, int]]:
    """(series, instances) of each study, as C-FIND and QIDO-RS report them."""
    with runtime.session_factory() as session:
        found = search(session, level=Level.STUDY, criteria={})
    return {
        str(s.StudyInstanceUID): (
            int(s.NumberOfStudyRelatedSeries),
            int(s.NumberOfStudyRelatedInstances),
        )
        for s in found
    }


# store_instances ------------------------------------------------------------------------------
def test_a_group_is_stored_with_one_outcome_each_and_second_copies_change_nothing(
    runtime: Runtime,
) -> None:
    study, other_study = generate_uid(), generate_uid()
    series = [generate_uid(), generate_uid(), generate_uid()]
    archived = ct(study, series[0], 1)
    assert runtime.archive.store_instance(parsed(archived), source="test").outcome is (
        StoreOutcome.STORED
    )
    group = [
        ct(study, series[0], 2),
        archived,  # archived already
        ct(study, series[1], 3),  # a new series of a known study
        ct(other_study, series[2], 1),  # a new study
        ct(study, series[1], 4),
    ]
    group.append(group[0])  # the same instance twice in one group
    results = runtime.archive.store_instances([parsed(ds) for ds in group], source="test")

    assert [r.outcome for r in results if isinstance(r, StoreResult)] == [
        StoreOutcome.STORED,
        StoreOutcome.ALREADY_PRESENT,
        StoreOutcome.STORED,
        StoreOutcome.STORED,
        StoreOutcome.STORED,
        StoreOutcome.ALREADY_PRESENT,
    ]
    assert [r.ref.sop_instance_uid for r in results if isinstance(r, StoreResult)] == [
        ds.SOPInstanceUID for ds in group
    ]
    assert runtime.archive.count()["instances"] == 5
    assert study_counts(runtime) == {study: (2, 4), other_study: (1, 1)}
    for ds in group:
        assert runtime.archive.read_instance_bytes(ds.SOPInstanceUID) == encoded(ds)
    assert staging_is_empty(runtime)

    # The whole group again: nothing changes.
    again = runtime.archive.store_instances([parsed(ds) for ds in group], source="test")
    assert {r.outcome for r in again if isinstance(r, StoreResult)} == {
        StoreOutcome.ALREADY_PRESENT
    }
    assert study_counts(runtime) == {study: (2, 4), other_study: (1, 1)}
    assert staging_is_empty(runtime)


def test_a_second_copy_under_other_study_and_patient_leaves_no_rows_behind(
    runtime: Runtime,
) -> None:
    """A modality that resends an instance with corrected study and patient data gets
    "already present", and the patient, study and series rows made for it are undone."""
    first = ct(generate_uid(), generate_uid(), 1)
    runtime.archive.store_instance(parsed(first), source="test")
    resent = ct(generate_uid(), generate_uid(), 1, PatientID="OTHER-ID", Modality="MR")
    resent.SOPInstanceUID = first.SOPInstanceUID
    resent.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID

    result = runtime.archive.store_instance(parsed(resent), source="test")

    assert result.outcome is StoreOutcome.ALREADY_PRESENT
    assert runtime.archive.count() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert study_counts(runtime) == {first.StudyInstanceUID: (1, 1)}
    # The next new instance after the undone rows is stored as usual.
    after = ct(first.StudyInstanceUID, first.SeriesInstanceUID, 2)
    assert runtime.archive.store_instance(parsed(after), source="test").outcome is (
        StoreOutcome.STORED
    )
    assert study_counts(runtime) == {first.StudyInstanceUID: (1, 2)}
    assert staging_is_empty(runtime)


# An SQLite file does not drop its connections: PostgreSQL only.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_lost_index_connection_is_replaced_and_the_store_goes_through(
    runtime: Runtime,
) -> None:
    """The archive keeps its index connection open between transactions; when the database
    drops it (a restart, an administrator), the next store is written on a new one."""
    study, series = generate_uid(), generate_uid()
    first, second = ct(study, series, 1), ct(study, series, 2)
    assert runtime.archive.store_instance(parsed(first), source="test").outcome is (
        StoreOutcome.STORED
    )
    writer = runtime.archive._index_writer.connection
    assert writer is not None
    backend_pid = writer.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
    with runtime.engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid})
        admin.commit()

    assert runtime.archive.store_instance(parsed(second), source="test").outcome is (
        StoreOutcome.STORED
    )
    assert study_counts(runtime) == {study: (1, 2)}
    assert runtime.archive.read_instance_bytes(second.SOPInstanceUID) == encoded(second)
    assert staging_is_empty(runtime)


def test_a_row_the_database_refuses_fails_only_its_own_instance(runtime: Runtime) -> None:
    """PostgreSQL refuses NUL characters in text (SQLite takes them): the other instances of
    the group are stored all the same, whether the refused row is the first of its series
    (rows created under a savepoint) or one of a series already known (the transaction is
    rolled back and written again without it)."""
    study, known_series, new_series = generate_uid(), generate_uid(), generate_uid()
    runtime.archive.store_instance(parsed(ct(study, known_series, 1)), source="test")
    group = [
        ct(study, known_series, 2),
        ct(study, new_series, 1),  # first of its series
        ct(study, known_series, 3),  # series known already
        ct(study, new_series, 2),
    ]
    instances = [
        parsed(group[0]),
        refused_by_postgres(group[1], "PatientID"),
        refused_by_postgres(group[2], "ViewPosition"),
        parsed(group[3]),
    ]
    results = runtime.archive.store_instances(instances, source="test")

    postgres = runtime.engine.dialect.name == "postgresql"
    refused = [i for i, r in enumerate(results) if not isinstance(r, StoreResult)]
    assert refused == ([1, 2] if postgres else [])
    if postgres:
        assert all(type(results[i]).__name__ == "DataError" for i in refused)
    stored = [ds for i, ds in enumerate(group) if i not in refused]
    assert all(
        isinstance(r, StoreResult) and r.outcome is StoreOutcome.STORED
        for i, r in enumerate(results)
        if i not in refused
    )
    assert runtime.archive.count()["instances"] == 1 + len(stored)
    assert study_counts(runtime) == {study: (2, 1 + len(stored))}
    for ds in stored:
        assert runtime.archive.read_instance_bytes(ds.SOPInstanceUID) == encoded(ds)
    assert staging_is_empty(runtime)


def test_a_refused_row_of_a_known_series_fails_alone_and_the_next_stores_go_on(
    runtime: Runtime,
) -> None:
    """On PostgreSQL an instance of a known series is one statement outside any transaction:
    a refused one changes nothing, and the stores after it (alone, then a group whose rows
    must commit together) are written and counted as usual."""
    study, series = generate_uid(), generate_uid()
    runtime.archive.store_instance(parsed(ct(study, series, 1)), source="test")
    bad = refused_by_postgres(ct(study, series, 2), "ViewPosition")
    postgres = runtime.engine.dialect.name == "postgresql"
    if postgres:
        with pytest.raises(DataError):
            runtime.archive.store_instance(bad, source="test")
    else:
        runtime.archive.store_instance(bad, source="test")  # SQLite takes NUL characters
    assert runtime.archive.store_instance(parsed(ct(study, series, 3)), source="test").outcome is (
        StoreOutcome.STORED
    )
    group = [parsed(ct(study, series, n)) for n in (4, 5)]
    assert all(
        isinstance(r, StoreResult) and r.outcome is StoreOutcome.STORED
        for r in runtime.archive.store_instances(group, source="test")
    )
    assert study_counts(runtime) == {study: (1, 4 if postgres else 5)}
    assert staging_is_empty(runtime)


@pytest.mark.parametrize("size", [1, 3])
def test_files_that_cannot_be_made_durable_are_refused_and_not_indexed(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """A failed fsync (a full or failing disk) fails the instances it concerns, before any
    row is written: nothing indexed, nothing left in staging, and the next store works."""
    from qamqor.pacs import storage
    from qamqor.pacs.errors import StorageUnavailableError

    def failing_fsync(path: Path) -> None:
        raise OSError(5, "Input/output error")

    study, series = generate_uid(), generate_uid()
    monkeypatch.setattr(storage, "_fsync_file", failing_fsync)
    group = [parsed(ct(study, series, n)) for n in range(size)]
    results = runtime.archive.store_instances(group, source="test")
    assert [type(r) for r in results] == [StorageUnavailableError] * size
    assert runtime.archive.count()["instances"] == 0
    assert staging_is_empty(runtime)

    monkeypatch.undo()
    (result,) = runtime.archive.store_instances([parsed(ct(study, series, 9))], source="test")
    assert isinstance(result, StoreResult) and result.outcome is StoreOutcome.STORED
    assert study_counts(runtime) == {study: (1, 1)}


def test_concurrent_stores_are_each_answered_once_committed(
    runtime: Runtime,
) -> None:
    threads, per_thread = 8, 12
    studies = [generate_uid() for _ in range(3)]
    series = {s: [generate_uid(), generate_uid()] for s in studies}
    work = [
        [
            ct(studies[n % 3], series[studies[n % 3]][n % 2], t * per_thread + n)
            for n in range(per_thread)
        ]
        for t in range(threads)
    ]
    seen_committed: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def send(datasets: list[Dataset]) -> None:
        try:
            start.wait()
            for ds in datasets:
                result = runtime.archive.store_instance(parsed(ds), source="test")
                assert result.outcome is StoreOutcome.STORED
                # Answered: its row is committed, visible to any other connection.
                with runtime.engine.connect() as connection:
                    seen_committed.append(
                        connection.scalar(
                            select(Instance.id).where(
                                Instance.sop_instance_uid == ds.SOPInstanceUID
                            )
                        )
                        is not None
                    )
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=send, args=(w,)) for w in work]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)

    assert not errors
    total = threads * per_thread
    assert seen_committed == [True] * total
    assert runtime.archive.count()["instances"] == total
    with runtime.session_factory() as session:
        found = search(session, level=Level.SERIES, criteria={})
    assert sorted(int(s.NumberOfSeriesRelatedInstances) for s in found) == sorted(
        sum(1 for w in work for ds in w if ds.SeriesInstanceUID == uid)
        for s in studies
        for uid in series[s]
    )
    assert set(study_counts(runtime).values()) == {(2, total // 3)}
    assert staging_is_empty(runtime)


# STOW-RS --------------------------------------------------------------------------------------
class LastResponse:
    response: requests.Response | None = None

    def __call__(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        self.response = response


@pytest.fixture
def last_response() -> LastResponse:
    return LastResponse()


@pytest.fixture
def client(
    live_server: LiveServer, admin_credentials: tuple[str, str], last_response: LastResponse
) -> DICOMwebClient:
    session = create_session_from_user_pass(*admin_credentials)
    return DICOMwebClient(
        url=f"{live_server.url}/dicom-web", session=session, callback=last_response
    )


def test_stow_of_several_groups_answers_every_part_in_order(
    client: DICOMwebClient, runtime: Runtime, last_response: LastResponse
) -> None:
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    datasets = [ct(study, series[n % 2], n) for n in range(GROUP_PARTS + 7)]
    datasets.insert(GROUP_PARTS + 2, datasets[3])  # a second copy, in the second group
    no_uid = ct(study, series[0], 99)
    del no_uid.SOPInstanceUID
    no_uid.file_meta.MediaStorageSOPInstanceUID = ""
    datasets.insert(5, no_uid)

    answer = client.store_instances(datasets)
    assert last_response.response is not None
    assert last_response.response.status_code == 202  # some refused
    (failed,) = answer.FailedSOPSequence
    assert "SOPInstanceUID is missing" in failed[0x00000902].value
    referenced = [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence]
    assert referenced == [ds.SOPInstanceUID for ds in datasets if ds is not no_uid]

    unique = {ds.SOPInstanceUID for ds in datasets if ds is not no_uid}
    assert runtime.archive.count()["instances"] == len(unique)
    assert study_counts(runtime) == {study: (2, len(unique))}
    for ds in datasets[:3]:
        assert runtime.archive.read_instance_bytes(ds.SOPInstanceUID) == encoded(ds)
    assert staging_is_empty(runtime)


# DICOM node -----------------------------------------------------------------------------------
def test_file_meta_is_encoded_as_pydicom_encodes_it() -> None:
    cases = [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1", "STORESCU"),
        ("1.2.840.10008.5.1.4.1.1.1.2", "1.2.3.4.56", "1.2.840.10008.1.2", "ABC"),
        ("1.2.840.10008.5.1.4.1.1.7", "1.2.3", "1.2.840.10008.1.2.4.90", ""),
    ]
    for sop_class, sop_instance, syntax, title in cases:
        meta = create_file_meta(
            sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax
        )
        if title:
            meta.SourceApplicationEntityTitle = title
        buffer = DicomBytesIO()
        write_file_meta_info(buffer, meta, enforce_standard=True)
        assert file_meta_bytes(sop_class, sop_instance, syntax, title) == buffer.getvalue()


@pytest.fixture
def node(runtime: Runtime) -> Iterator[DicomNode]:
    settings = runtime.settings.model_copy(
        update={
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            "dicom_accept_unknown_aes": True,
        }
    )
    dicom_node = DicomNode(settings=settings, archive=runtime.archive)
    dicom_node.start()
    try:
        yield dicom_node
    finally:
        dicom_node.stop()


def _thread_cpu_seconds(native_ids: list[int]) -> float:
    total = 0
    for tid in native_ids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def test_idle_associations_cost_the_node_almost_no_cpu_and_end_at_once(node: DicomNode) -> None:
    if not node.fast_path:
        pytest.skip("pynetdicom's own reactors poll (the plain path)")
    ae = AE(ae_title="IDLESCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    handlers = [(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
    assocs = [ae.associate("127.0.0.1", node.port, ae_title="QAMQOR", evt_handlers=handlers)
              for _ in range(8)]  # fmt: skip
    try:
        assert all(a.is_established for a in assocs)
        assert all(a.send_c_echo().Status == 0 for a in assocs)
        deadline = time.monotonic() + 10
        while len(node.ae.active_associations) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        served = node.ae.active_associations
        threads = [t.native_id for a in served for t in (a, a.dul) if t.native_id]
        assert len(threads) == 16
        before = _thread_cpu_seconds(threads)
        time.sleep(3)
        used = _thread_cpu_seconds(threads) - before
        # pynetdicom's polling reactors: about 0.47 s per second here, for 8 associations.
        assert used < 0.3, f"{used:.2f} s of CPU in 3 s for 8 idle associations"
        # Still served at once after the idle time (a store, a release, an abort).
        ds = ct(generate_uid(), generate_uid(), 1)
        started = time.monotonic()
        assert assocs[0].send_c_store(ds).Status == 0
        assert time.monotonic() - started < 2
    finally:
        assocs[0].release()
        for assoc in assocs[1:4]:
            assoc.release()
        for assoc in assocs[4:]:
            assoc.abort()
    deadline = time.monotonic() + 2
    while node.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.01)
    assert node.ae.active_associations == []
