from __future__ import annotations

import time

from pydicom.data import get_testdata_file

from qamqor.pacs.parsing import parse_part10
from qamqor.pacs.stability import STUDY_STABLE, StableStudyWatcher
from qamqor.runtime import Runtime


def test_a_study_is_announced_once_after_its_last_instance(runtime: Runtime) -> None:
    heard: list[str] = []
    runtime.events.subscribe(
        STUDY_STABLE, lambda study_instance_uid: heard.append(study_instance_uid)
    )
    watcher = StableStudyWatcher(
        session_factory=runtime.session_factory, events=runtime.events, quiet_seconds=0.3
    )
    with open(get_testdata_file("CT_small.dcm"), "rb") as handle:
        parsed = parse_part10(handle.read())
    runtime.archive.store_instance(parsed, source="test")

    assert watcher.check_once() == []  # still within the quiet period
    time.sleep(0.4)
    study_uid = str(parsed.dataset.StudyInstanceUID)
    assert watcher.check_once() == [study_uid]
    assert watcher.check_once() == []  # announced once
    # A second watcher (another process) does not announce it again.
    other = StableStudyWatcher(
        session_factory=runtime.session_factory, events=runtime.events, quiet_seconds=0.3
    )
    assert other.check_once() == []
    assert heard == [study_uid]
