"""Archive backfill by WADO-RS from Orthanc's DICOMweb plugin (Debian orthanc-dicomweb).

The series comes back as multipart/related Part 10 files; each goes through the
node's receive path, byte for byte what the archive holds. A series the
archive does not have fails with the HTTP status and is retried.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from storage.models import Instance
from tests.agent.backfill_env import (
    DICOMWEB_PLUGIN,
    ORTHANC_AET,
    ORTHANC_DICOM,
    ORTHANC_HTTP,
    ArchivedSeries,
    Orthanc,
    backfill_rows,
    campaign_state,
    db,
    describe,
    instance_counts,
    jobs_by_series,
    start_campaign,
)
from tests.agent.pipeline_env import Serve, agent_config, wait_for
from tests.agent.report_tools import tool
from tests.support.ct_series import CANARY_BIRTH, CANARY_ID, CANARY_NAME, ct_series, write_series
from tests.support.netns import private_netns

pytestmark = pytest.mark.slow


def test_wado_rs_retrieves_each_instance_through_the_node(tmp_path: Path) -> None:
    tool(DICOMWEB_PLUGIN, "orthanc-dicomweb")
    archived = [describe(write_series(ct_series(20, seed=i), tmp_path / f"s{i}")) for i in range(2)]
    absent = ArchivedSeries(archived[0].study_uid, "1.2.826.0.1.3680043.10.9.404", [])
    extra = (
        f'[[archives]]\nname = "web"\nae_title = "{ORTHANC_AET}"\nhost = "127.0.0.1"\n'
        f'port = {ORTHANC_DICOM}\ndicomweb_url = "http://127.0.0.1:{ORTHANC_HTTP}/dicom-web/"\n'
        "[backfill]\nretry_seconds = 0.5\nmax_attempts = 2\n"
    )
    (tmp_path / "no-model").mkdir()  # the node role never loads it
    config = agent_config(tmp_path, tmp_path / "no-model", extra=extra)
    with private_netns() as ns:
        serve = Serve(config, ns, args=("--role", "node"))
        try:
            orthanc = Orthanc(ns, tmp_path, serve.port, plugins=[DICOMWEB_PLUGIN])
            orthanc.load(archived)
            start_campaign(tmp_path, "web", "web", [*archived, absent])
            wait_for(lambda: campaign_state(tmp_path, "web") == "done", 120, "done", serve)
        finally:
            assert serve.stop() == 0
    rows = backfill_rows(tmp_path)
    counts = instance_counts(tmp_path)
    for a in archived:
        assert rows[a.series_uid].state == "retrieved"
        assert rows[a.series_uid].completed_suboperations == len(a.files)
        assert counts[a.series_uid] == len(a.files)
        assert jobs_by_series(tmp_path)[a.series_uid].origin == "backfill"
    missing = rows[absent.series_uid]
    assert missing.state == "dead" and "HTTP 404" in (missing.last_error or "")
    # What the node stored is what the archive held: same pixels, same UIDs.
    originals = {dcmread(f).SOPInstanceUID: dcmread(f) for f in archived[0].files}
    with db(tmp_path) as s:
        paths = s.scalars(select(Instance.rel_path)).all()
    checked = 0
    for rel in paths:
        stored = dcmread(tmp_path / "storage" / rel)
        if stored.SOPInstanceUID in originals:
            assert stored.PixelData == originals[stored.SOPInstanceUID].PixelData
            checked += 1
    assert checked == len(archived[0].files)
    log = "".join(serve.lines)  # the series carry the canaries of tests.support.ct_series
    assert CANARY_NAME not in log and CANARY_ID not in log and CANARY_BIRTH not in log
