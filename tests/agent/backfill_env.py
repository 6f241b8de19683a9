"""Real archives for backfill tests: Orthanc (C-MOVE) and DCMTK dcmqrscp (C-GET).

Both listen on every interface, so they run inside a private network namespace
(:mod:`tests.support.netns`) with the agent under test. Campaigns are inserted
straight into the agent's database (planning is another module's work).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from storage.models import (
    BackfillCampaign,
    BackfillSeries,
    BackfillState,
    CampaignState,
    Instance,
    Job,
    Series,
)
from tests.agent.pipeline_env import wait_for
from tests.agent.report_tools import tool
from tests.support.netns import NetNS

ORTHANC_AET, ORTHANC_DICOM, ORTHANC_HTTP = "ORTHANC", 4242, 8042
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
QR_AET, QR_PORT = "ARCHIVE", 11112


@dataclass(frozen=True)
class ArchivedSeries:
    study_uid: str
    series_uid: str
    files: list[Path]


def describe(files: list[Path]) -> ArchivedSeries:
    ds = dcmread(files[0], stop_before_pixels=True)
    return ArchivedSeries(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), files)


def archive_toml(name: str, aet: str, port: int, retrieve: str = "move") -> str:
    return (
        f'[[archives]]\nname = "{name}"\nae_title = "{aet}"\nhost = "127.0.0.1"\n'
        f'port = {port}\nretrieve = "{retrieve}"\n'
    )


def db(folder: Path) -> Session:
    return Session(create_engine(f"sqlite:///{folder / 'agent.db'}"))


def start_campaign(folder: Path, name: str, archive: str, series: Sequence[ArchivedSeries]) -> None:
    """A running campaign whose planned series are ``series`` (as planning would leave it)."""
    with db(folder) as s, s.begin():
        c = BackfillCampaign(
            name=name, archive=archive, date_from="20200101", date_to="20201231",
            state=CampaignState.RUNNING,
        )  # fmt: skip
        s.add(c)
        s.flush()
        for a in series:
            s.add(
                BackfillSeries(
                    campaign_id=c.id,
                    study_instance_uid=a.study_uid,
                    series_instance_uid=a.series_uid,
                    expected_instances=len(a.files),
                    modality="CT",
                    state=BackfillState.PLANNED,
                )  # fmt: skip
            )


def campaign_state(folder: Path, name: str) -> str:
    with db(folder) as s:
        return str(s.scalar(select(BackfillCampaign.state).where(BackfillCampaign.name == name)))


def backfill_rows(folder: Path) -> dict[str, BackfillSeries]:
    with db(folder) as s:
        rows = s.scalars(select(BackfillSeries)).all()
        s.expunge_all()
        return {r.series_instance_uid: r for r in rows}


def jobs_by_series(folder: Path) -> dict[str, Job]:
    with db(folder) as s:
        rows = s.execute(select(Series.series_instance_uid, Job).join(Job.series)).all()
        s.expunge_all()
        return {uid: job for uid, job in rows}


def instance_counts(folder: Path) -> dict[str, int]:
    with db(folder) as s:
        return dict(
            s.execute(  # type: ignore[arg-type]
                select(Series.series_instance_uid, func.count(Instance.id))
                .join(Instance, Instance.series_id == Series.id)
                .group_by(Series.series_instance_uid)
            ).all()
        )


class Orthanc:
    """Orthanc 1.10 in the namespace, knowing the agent as modality ``hyperct``."""

    def __init__(
        self, ns: NetNS, folder: Path, agent_port: int, plugins: Sequence[str] = ()
    ) -> None:
        self.ns = ns
        self.storage = folder / "orthanc"
        config = folder / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "test-archive", "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage), "DicomAet": ORTHANC_AET,
            "DicomPort": ORTHANC_DICOM, "HttpPort": ORTHANC_HTTP, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": list(plugins),
            "DicomModalities": {"hyperct": ["HYPERCT", "127.0.0.1", agent_port]},
        }))  # fmt: skip
        ns.popen([tool("/usr/sbin/Orthanc", "orthanc"), str(config)], stdout=-3, stderr=-3)
        wait_for(lambda: self.rest("GET", "/system"), 60, "Orthanc to start")

    def rest(self, method: str, path: str) -> Any:
        cmd = ["curl", "-sf", "-X", method, f"http://127.0.0.1:{ORTHANC_HTTP}{path}"]
        out = self.ns.run(cmd, capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout else None

    def load(self, series: Sequence[ArchivedSeries]) -> None:
        files = [str(f) for a in series for f in a.files]
        sent = self.ns.run(
            [tool("/usr/bin/storescu", "dcmtk"), "-aet", "LOADER", "-aec", ORTHANC_AET,
             "127.0.0.1", str(ORTHANC_DICOM), *files],
            capture_output=True, text=True,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert len(self.rest("GET", "/instances") or []) == len(files)


class QueryRetrieveSCP:
    """DCMTK dcmqrscp holding ``series`` in one storage area, the agent as its peer."""

    def __init__(self, ns: NetNS, folder: Path, series: Sequence[ArchivedSeries]) -> None:
        self.ns = ns
        self.storage = folder / "dcmqrscp"
        self.storage.mkdir()
        config = folder / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {QR_PORT}\nMaxPDUSize = 16384\nMaxAssociations = 4\n"
            "HostTable BEGIN\nagent = (HYPERCT, 127.0.0.1, 0)\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{QR_AET} {self.storage} RW (200, 1024mb) ANY\nAETable END\n"
        )
        self.files: dict[str, list[Path]] = {}
        for a in series:
            for f in a.files:
                target = self.storage / f"{a.series_uid[-12:]}-{f.name}"
                target.write_bytes(f.read_bytes())
                self.files.setdefault(a.series_uid, []).append(target)
        index = subprocess.run(
            [tool("/usr/bin/dcmqridx", "dcmtk"), str(self.storage),
             *map(str, [p for fs in self.files.values() for p in fs])],
            capture_output=True, text=True,
        )  # fmt: skip
        assert index.returncode == 0, index.stderr
        self.proc = ns.popen(
            [tool("/usr/bin/dcmqrscp", "dcmtk"), "-c", str(config), "--disable-host-lookup"],
            stdout=-3, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(self._listening, 30, "dcmqrscp to listen")

    def _listening(self) -> bool:
        out = self.ns.run(
            [tool("/usr/bin/echoscu", "dcmtk"), "-aec", QR_AET, "127.0.0.1", str(QR_PORT)],
            capture_output=True,
        )  # fmt: skip
        return out.returncode == 0
