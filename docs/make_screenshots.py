"""Regenerate the README's screenshots of the reports as a viewer renders them.

A real screening, end to end on this machine: the synthetic chest CT that
``hyperct-agent demo`` sends (the same phantom and noise) is written as DICOM,
read and screened by the committed demo model, and its two SRs and summary image
are built exactly as the agent builds them. Each SR is rendered with DCMTK's
``dsr2html`` (how many viewers and PACS show SR) and photographed in headless
Chromium; the summary image is saved as the pixels a viewer shows::

    python docs/make_screenshots.py   # writes docs/img/report-*.png, summary-image.png

Needs dcmtk and chromium (Debian packages). The images show a demo model on a
phantom: the findings mean nothing clinically.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's agent, not another installed copy
OUT = ROOT / "docs" / "img"
WINDOW = "1000,1400"


def screen_phantom(work: Path) -> list[Path]:
    """Screen one phantom series with the demo model; return (TID 1500, readable) SR paths."""
    from agent.commands.demo import DEMO_NOISE_SEED, demo_phantom
    from agent.config import Settings
    from agent.pipeline.screen import findings_for
    from agent.report import ModelIdentity, build_reports, write_reports
    from agent.report.summary import key_image_from_volume, summary_object
    from hyperct_core import phantoms
    from hyperct_core.checkpoint import file_sha256, resolve_checkpoint
    from hyperct_core.demo import demo_checkpoint_path
    from hyperct_core.inference import load_predictor
    from hyperct_core.preprocess import images_from_volume
    from hyperct_core.volume import volume_from_datasets

    files = phantoms.write_dicom_series(
        demo_phantom(),
        work / "ct",
        rng=np.random.default_rng(DEMO_NOISE_SEED),
        patient_name="DEMO^PHANTOM",
        patient_id="DEMO0001",
    )
    checkpoint = demo_checkpoint_path()
    predictor = load_predictor(checkpoint, device="cpu")
    volume = volume_from_datasets(files, predictor.card.preprocess_config().orientation)
    images = images_from_volume(volume, predictor.card.preprocess_config())
    probabilities = np.asarray(predictor.predict([images]))[0]
    weights, _ = resolve_checkpoint(checkpoint)
    identity = ModelIdentity.from_card(predictor.card, file_sha256(weights))
    findings = findings_for(probabilities, predictor.card, identity, Settings())
    headers = [dcmread(p, stop_before_pixels=True) for p in files]
    canonical = volume.reoriented("LPS")
    key = key_image_from_volume(canonical.array, canonical.spacing)
    summary = summary_object(headers, findings, identity, key, revision=1, series_number=9902)
    Image.fromarray(summary.pixel_array).save(OUT / "summary-image.png")
    return write_reports(build_reports(headers, findings, identity, series_number=9901), work)


def photograph(sr: Path, png: Path, work: Path) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}
    page = work / f"{png.stem}.html"
    html = subprocess.run(["dsr2html", str(sr)], capture_output=True, text=True, env=env)
    if html.returncode != 0:
        sys.exit(f"dsr2html failed on {sr.name}: {html.stderr.strip()}")
    page.write_text(html.stdout)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed")
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={png}", f"--window-size={WINDOW}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        measurement, readable = screen_phantom(work)
        photograph(readable, OUT / "report-readable.png", work)
        photograph(measurement, OUT / "report-tid1500.png", work)
    print(f"wrote report-readable.png, report-tid1500.png and summary-image.png under {OUT}")


if __name__ == "__main__":
    main()
