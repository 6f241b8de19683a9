"""The contrast decision through a real ``serve``: tags, the image check, and ``explain``.

Phantoms with and without an enhanced blood pool (250 HU), with and without the
Contrast/Bolus Agent, are sent over DICOM to one agent; the job rows, the log and
``hyperct-agent explain`` must tell what happened to each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from hyperct_core import phantoms
from storage.models import Job, JobState, Series
from tests.agent.pipeline_env import Serve, agent_config, tiny_checkpoint, wait_for
from tests.agent.test_cli import cli
from tests.agent.test_pipeline_faults import send

pytestmark = pytest.mark.slow

ENHANCED = phantoms.PhantomSpec(blood_pool_hu=250.0, seed=3)
PLAIN = phantoms.PhantomSpec(seed=3)


def series(folder: Path, spec: phantoms.PhantomSpec, *, thickness: float = 2.5, seed: int = 0,
           **kwargs: object) -> tuple[str, list[Path]]:  # fmt: skip
    """A chest phantom series (128 slices) and its Series Instance UID."""
    from pydicom.uid import generate_uid

    uid = generate_uid()
    paths = phantoms.write_dicom_series(
        spec, folder, rng=np.random.default_rng(seed), spacing=(thickness, 2.5, 2.5),
        shape=(128, 128, 128), series_uid=uid, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    return uid, paths


def jobs(url: str) -> dict[str, Job]:
    with Session(create_engine(url)) as s:
        rows = s.execute(select(Series.series_instance_uid, Job).join(Job)).all()
        for _uid, job in rows:
            s.expunge(job)
        return {uid: job for uid, job in rows}


def test_contrast_by_tags_and_by_image(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "model")
    study = "1.2.826.0.1.3680043.10.77.1"
    # A study with a thin enhanced series whose words are neutral and a thicker plain one:
    # the thin one is chosen by the tags, the image finds it enhanced, the other is screened.
    neutral_enhanced, files_a = series(
        tmp_path / "a", ENHANCED, thickness=2.0, study_uid=study,
        description="Thorax 1.0 Br40", series_number=2,
    )  # fmt: skip
    plain_sibling, files_b = series(
        tmp_path / "b", PLAIN, seed=1, study_uid=study,
        description="Thorax 3.0 Br40", series_number=3,
    )  # fmt: skip
    # The tags say non-contrast, the image says contrast: the image wins.
    mislabelled, files_c = series(
        tmp_path / "c", ENHANCED, seed=2, description="CT CHEST WO CONTRAST",
        study_description="CT CHEST W/WO CONTRAST",
    )  # fmt: skip
    # An agent saying none and an unenhanced image: screened.
    agent_none, files_d = series(tmp_path / "d", PLAIN, seed=3, contrast_agent="NONE",
                                 description="Thorax 1.0 Br40")  # fmt: skip
    # An agent named: skipped by the tags, never measured.
    agent_named, files_e = series(tmp_path / "e", ENHANCED, seed=4, contrast_agent="IOPAMIDOL",
                                  description="Thorax 1.0 Br40")  # fmt: skip

    url = f"sqlite:///{tmp_path / 'agent.db'}"
    config = agent_config(tmp_path, checkpoint, database=url)
    serve = Serve(config)
    try:
        for files in (files_a, files_b, files_c, files_d, files_e):
            send(serve.port, files)
        settled = (JobState.DONE, JobState.SKIPPED)

        def decided() -> dict[str, Job] | None:
            now = jobs(url)
            want = [neutral_enhanced, plain_sibling, mislabelled, agent_none, agent_named]
            if all(u in now and now[u].state in settled for u in want):
                # The sibling is screened once the enhanced series gave way.
                return now if now[plain_sibling].state == JobState.DONE else None
            return None

        final = wait_for(decided, 240, "every series decided", serve)
    finally:
        assert serve.stop() == 0

    a = final[neutral_enhanced]
    assert a.state == JobState.SKIPPED and a.reason.startswith("contrast by image: blood pool")
    assert a.blood_pool_hu is not None and 220 <= a.blood_pool_hu <= 290
    assert "tags said" not in a.reason  # the tags said nothing: no disagreement

    b = final[plain_sibling]
    assert b.state == JobState.DONE and b.blood_pool_hu is not None and b.blood_pool_hu < 80
    assert b.image_check.startswith(f"blood pool {b.blood_pool_hu:.0f} HU, below 120 HU")

    c = final[mislabelled]
    assert c.state == JobState.SKIPPED and c.reason.startswith("contrast by image")
    assert "the tags said non-contrast" in c.reason and "the image wins" in c.reason
    warnings = serve.events("tags say non-contrast, the image says contrast")
    assert len(warnings) == 1 and warnings[0]["job"] == c.id
    assert "WO CONTRAST" not in json.dumps(warnings)  # ids and numbers only

    d = final[agent_none]
    assert d.state == JobState.DONE and d.blood_pool_hu is not None and d.blood_pool_hu < 80

    e = final[agent_named]
    assert e.state == JobState.SKIPPED and "Contrast/Bolus Agent is 'IOPAMIDOL'" in e.reason
    assert e.blood_pool_hu is None and e.image_check is None

    # explain shows the image check and keeps the enhanced series out of the choice.
    out = cli("explain", study, "--config", str(config))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"chosen: series 3 'Thorax 3.0 Br40' {plain_sibling}" in text
    assert "decision: skipped" in text
    assert "reason: contrast by image: blood pool" in text
    assert f"image check: blood pool {b.blood_pool_hu:.0f} HU, below 120 HU" in text
    assert "at or above 120 HU: enhanced" in text


def test_image_check_off_screens_what_the_tags_allow(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "model")
    uid, files = series(tmp_path / "a", ENHANCED, description="Thorax 1.0 Br40")
    url = f"sqlite:///{tmp_path / 'agent.db'}"
    config = agent_config(tmp_path, checkpoint, database=url,
                          extra="[eligibility]\nblood_pool_check = false\n")  # fmt: skip
    serve = Serve(config)
    try:
        send(serve.port, files)
        final = wait_for(
            lambda: (j := jobs(url)).get(uid) is not None and j[uid].state == JobState.DONE and j,
            240, "the series screened", serve,
        )  # fmt: skip
    finally:
        assert serve.stop() == 0
    assert final[uid].blood_pool_hu is None and final[uid].image_check is None
