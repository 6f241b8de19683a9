"""A newcomer's first series: `model phantoms` output is screened by a default agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from hyperct_core.demo import DEMO_RECIPE
from hyperct_core.phantoms import DEFAULT_SHAPE, DEFAULT_SPACING


def test_default_phantoms_are_complete_and_eligible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "phantoms"
    assert main(["model", "phantoms", str(out), "--count", "1"]) == 0
    capsys.readouterr()
    # Embedded defaults: [eligibility] max_slice_thickness 3 mm, min_slices 64,
    # [completeness] min_coverage_mm 150.
    assert main(["explain", "--dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "decision: queued" in text and "reason: complete and eligible" in text, text


def test_the_demo_recipe_keeps_its_own_training_geometry() -> None:
    # The committed demo checkpoint was trained at 64 x 5 mm; changing the phantoms'
    # default must not change what `model make-demo` rebuilds.
    assert DEMO_RECIPE["phantom_shape"] == [64, 128, 128]
    assert DEMO_RECIPE["phantom_spacing"] == [5.0, 2.8, 2.8]
    # The same physical extent, so the anatomy is drawn alike at both geometries.
    assert DEFAULT_SHAPE[0] * DEFAULT_SPACING[0] == 64 * 5.0
