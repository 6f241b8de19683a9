"""One screening in process: each file is read once for the volume and its reports, and
the echo referral is decided once, stored, and shown alike by every output.

A small phantom series is received by a real node (DCMTK storescu), queued, and
screened by :class:`agent.pipeline.screen.Screener` with the real report writer.
"""

from __future__ import annotations

import builtins
import importlib
import io
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

import agent.pipeline.reporting as reporting
import agent.pipeline.screen as screen_module
from agent.config import Settings
from agent.pipeline.model import ModelHolder
from agent.pipeline.reporting import ReportFiles
from agent.pipeline.screen import Screener
from agent.report import DEFAULT_REFERRAL_TASKS
from agent.report.summary import _NO_REFER, _REFER
from agent.resources import alembic_dir
from hyperct_core import phantoms
from hyperct_core.tasks import task_by_name
from storage.db import make_engine, upgrade
from storage.models import Job, JobState
from tests.agent.conftest import NodeUnderTest, start_test_node
from tests.agent.pipeline_env import tiny_checkpoint
from tests.agent.report_tools import parse_measurement_report, walk
from tests.agent.test_cli import cli

pytestmark = pytest.mark.slow  # one screening on CPU: about a minute on a shared machine

# The module, not agent.report.referral (the package names its function so).
referral = importlib.import_module("agent.report.referral")

FIRES, QUIET = DEFAULT_REFERRAL_TASKS[0], DEFAULT_REFERRAL_TASKS[1]
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def receive(tmp_path: Path, engine: Engine) -> NodeUnderTest:
    """A node that has received a 16-slice phantom series, its job queued."""
    node = start_test_node(tmp_path, engine)
    files = phantoms.write_dicom_series(
        phantoms.PhantomSpec(),
        tmp_path / "series",
        rng=np.random.default_rng(0),
        spacing=(2.5, 5.0, 5.0),
        shape=(16, 48, 48),
    )
    sent = node.storescu(*files)
    assert sent.returncode == 0, sent.stderr[-2000:]
    with node.sessions.begin() as s:
        s.execute(update(Job).values(state=JobState.QUEUED, next_attempt_at=None))
    return node


def settings_for(checkpoint: Path, thresholds: dict[str, float]) -> Settings:
    return Settings.model_validate(
        {
            "model": {"checkpoint": str(checkpoint), "dtype": "float32"},
            "referral": {"tasks": [FIRES, QUIET], "thresholds": thresholds},
        }
    )


def screener(node: NodeUnderTest, settings: Settings) -> Screener:
    holder = ModelHolder(settings.model)
    holder.start()
    assert holder.get(timeout=300) is not None, holder.error
    return Screener(
        settings, node.sessions, node.store, holder, "w1", ReportFiles(node.store, settings.reports)
    )


class Reads:
    """Counts, per file, each open() and each pydicom.dcmread() of it."""

    def __init__(self) -> None:
        self.opens: Counter[str] = Counter()
        self.dcmreads: Counter[str] = Counter()

    @staticmethod
    def _key(target: Any) -> str | None:
        if isinstance(target, str | os.PathLike):
            return os.path.realpath(target)
        name = getattr(target, "name", None)  # an open file handed to dcmread
        return os.path.realpath(name) if isinstance(name, str) else None

    def wrap_open(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(file: Any, *args: Any, **kwargs: Any) -> Any:
            key = self._key(file)
            if key is not None:
                self.opens[key] += 1
            return real(file, *args, **kwargs)

        return counted

    def wrap_dcmread(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(fp: Any, *args: Any, **kwargs: Any) -> Any:
            key = self._key(fp)
            if key is not None:
                self.dcmreads[key] += 1
            return real(fp, *args, **kwargs)

        return counted


@dataclass
class Screened:
    node: NodeUnderTest
    reads: Reads
    sources: list[str]
    decisions: int  # how often the referral rule was applied


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Iterator[Screened]:
    """One series screened once, with FIRES at threshold 0 (it fires) and QUIET at 1."""
    tmp_path = tmp_path_factory.mktemp("screen")
    engine = make_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    upgrade(engine, alembic_dir())
    node = receive(tmp_path, engine)
    try:
        screen = screener(node, settings_for(checkpoint, {FIRES: 0.0, QUIET: 1.0}))
        reads = Reads()
        decisions = Counter[str]()
        real_decide = referral.decide

        def decide(findings: Any) -> Any:
            decisions["rule"] += 1
            return real_decide(findings)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(screen_module, "decide", decide)
            patch.setattr(referral, "decide", decide)
            # builtins.open serves pydicom; io.open serves pathlib's Path.open.
            patch.setattr(builtins, "open", reads.wrap_open(builtins.open))
            patch.setattr(io, "open", reads.wrap_open(io.open))
            patch.setattr(pydicom, "dcmread", reads.wrap_dcmread(pydicom.dcmread))
            patch.setattr(reporting, "dcmread", reads.wrap_dcmread(reporting.dcmread))
            assert screen.run_once() == 1
    finally:
        node.node.stop()
    yield Screened(node, reads, [os.path.realpath(p) for p in node.files()], decisions["rule"])
    node.store.close()
    engine.dispose()


def test_screening_reads_each_file_once(screened: Screened) -> None:
    sources, reads = screened.sources, screened.reads
    assert len(sources) == 16
    # The header up to Pixel Data, then the rest of the file for the pixels (the
    # volume's memory bound is checked from all headers before any pixel is decoded);
    # each header is parsed once, and the reports read no file again.
    assert {p: reads.opens[p] for p in sources} == dict.fromkeys(sources, 2)
    assert {p: reads.dcmreads[p] for p in sources} == dict.fromkeys(sources, 1)
    # The reports cite every source image all the same.
    [sr] = [p for p in screened.node.store.root.glob("reports/*/*.dcm") if is_measurement(p)]
    cited = {
        str(item.ReferencedSOPInstanceUID)
        for item in walk(pydicom.dcmread(sr))
        if "ReferencedSOPInstanceUID" in item
    }
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources}
    assert uids <= cited


def test_stored_referral_is_what_every_output_shows(screened: Screened, tmp_path: Path) -> None:
    node = screened.node
    with node.sessions() as s:
        job = s.scalars(select(Job)).one()
        assert job.state == JobState.DONE
        assert job.echo_referral is True and job.referral_tasks == [FIRES]
        assert job.referral_rule == {"thresholds": {FIRES: 0.0, QUIET: 1.0}, "unassessed": []}
        study = job.series.study.study_instance_uid
    # Decided once, at screening; the SR, the readable report and the summary quote it.
    assert screened.decisions == 1

    # The rule's inputs change after screening: the opposite thresholds in agent.toml.
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{node.store.root.parent / "agent.db"}"\n'
        f'[storage]\nroot = "{node.store.root}"\n[logging]\nformat = "json"\n'
        f'[referral]\ntasks = ["{FIRES}", "{QUIET}"]\n'
        f"[referral.thresholds]\n{FIRES} = 1.0\n{QUIET} = 0.0\n"
    )
    results = cli("results", "--config", str(config))
    assert results.returncode == 0, results.stderr
    assert "YES" in results.stdout
    studies = cli("studies", "show", study, "--config", str(config))
    assert studies.returncode == 0, studies.stderr
    assert f"echo referral: YES (fired by {FIRES})" in studies.stdout
    assert f"referral rule: {FIRES}>=0, {QUIET}>=1" in studies.stdout

    # The reports written at screening say the same: SR group, readable report, summary.
    paths = sorted(node.store.root.glob("reports/*/*.dcm"))
    objects = [pydicom.dcmread(p) for p in paths]
    [sr_path] = [p for p in paths if is_measurement(p)]
    group = parse_measurement_report(sr_path).referral
    assert group is not None
    assert f"triggered_by={FIRES}" in group.algorithm_parameters
    assert {f"{FIRES}>=0", f"{QUIET}>=1"} <= set(group.algorithm_parameters)
    [text] = [o for o in objects if str(o.SOPClassUID) == COMPREHENSIVE_SR]
    body = "\n".join(i.TextValue for i in walk(text) if i.get("ValueType") == "TEXT")
    [triggered] = [line for line in body.splitlines() if "Triggered by:" in line]
    assert task_by_name(FIRES).display_name in triggered
    assert task_by_name(QUIET).display_name not in triggered
    [summary] = [o for o in objects if str(o.SOPClassUID) == SECONDARY_CAPTURE]
    banner = tuple(int(v) for v in summary.pixel_array[135, 40])  # inside the conclusion banner
    assert banner == _REFER != _NO_REFER


def is_measurement(path: Path) -> bool:
    sop_class = pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID
    return str(sop_class) == COMPREHENSIVE_3D_SR
