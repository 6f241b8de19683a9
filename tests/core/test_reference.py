"""Drift reference distributions and their statistics: PSI and the Kolmogorov-Smirnov distance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hyperct_core.ct_series import ct_image_series, write_datasets
from hyperct_core.reference import (
    build_reference,
    categorical_psi,
    categorical_reference,
    continuous_reference,
    ks_distance,
    psi,
    score_psi,
    score_reference,
    series_characteristics,
)


def test_psi_of_a_hand_worked_case() -> None:
    # (0.5-0.25) ln 2 + (0.5-0.75) ln(2/3)
    assert psi([0.25, 0.75], [0.5, 0.5]) == pytest.approx(0.25 * np.log(2) - 0.25 * np.log(2 / 3))
    assert psi([0.3, 0.7], [0.3, 0.7]) == 0.0


def test_score_psi_is_small_on_the_same_distribution_and_large_on_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = score_reference(rng.beta(2, 5, 5000))
    assert len(ref["edges"]) == 9 and ref["proportions"] == pytest.approx([0.1] * 10, abs=1e-3)
    same, live = score_psi(ref, rng.beta(2, 5, 1000))
    assert same < 0.05 and sum(live) == pytest.approx(1.0)
    shifted, _ = score_psi(ref, rng.beta(2, 5, 1000) + 0.15)
    assert shifted > 0.25


def test_tied_scores_keep_distinct_edges() -> None:
    scores = [0.5] * 90 + [0.9] * 10
    ref = score_reference(scores)
    assert ref["edges"] == sorted(set(ref["edges"])) and len(ref["edges"]) == 2
    assert ref["proportions"] == [0.0, 0.9, 0.1]  # a value on an edge counts above it
    assert score_psi(ref, scores)[0] == 0.0


def test_a_new_category_raises_the_psi() -> None:
    ref = categorical_reference(["SIEMENS"] * 60 + [" ge medical systems "] * 40 + [None] * 5)
    assert ref["n"] == 100 and ref["proportions"] == {"GE MEDICAL SYSTEMS": 0.4, "SIEMENS": 0.6}
    calm, _ = categorical_psi(ref, ["Siemens"] * 58 + ["GE MEDICAL SYSTEMS"] * 42)
    assert calm < 0.01
    moved, live = categorical_psi(ref, ["SIEMENS"] * 60 + ["CANON"] * 40)
    assert moved > 1.0 and live["CANON"] == 0.4


def test_ks_distance_on_protocol_values() -> None:
    ref = continuous_reference([120.0] * 70 + [100.0] * 20 + [140.0] * 10 + [None])
    assert ref["values"] == [100.0, 120.0, 140.0] and ref["cdf"] == pytest.approx([0.2, 0.9, 1])
    assert ks_distance(ref, [120.0] * 70 + [100.0] * 20 + [140.0] * 10) == pytest.approx(0.0)
    # Half the series moved from 120 to 100 kV: F(100) goes from 0.2 to 0.55.
    assert ks_distance(ref, [120.0] * 35 + [100.0] * 55 + [140.0] * 10) == pytest.approx(0.35)
    assert ks_distance(ref, [80.0] * 10) == pytest.approx(1.0)


def test_many_distinct_values_are_kept_as_quantiles() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=5000)
    ref = continuous_reference(values)
    assert len(ref["values"]) == 200
    assert ks_distance(ref, rng.normal(size=2000)) < 0.05
    assert ks_distance(ref, rng.normal(size=2000) + 1.0) > 0.3


def test_characteristics_come_from_the_series_headers(tmp_path: Path) -> None:
    pixels = np.zeros((2, 8, 8), dtype=np.int16)
    datasets = ct_image_series(
        pixels, [(0, 0, 0), (0, 0, 2.5)], pixel_spacing=(0.7, 0.7), slice_thickness=2.5,
        attrs={"Manufacturer": "CANON", "KVP": 100, "ConvolutionKernel": ["FC13", "AIDR"]},
    )  # fmt: skip
    write_datasets(datasets, tmp_path / "ct")
    (tmp_path / "ct" / "notes.txt").write_text("not DICOM")
    found = series_characteristics(tmp_path / "ct")
    assert found == {"manufacturer": "CANON", "kvp": 100, "slice_thickness": 2.5,
                     "convolution_kernel": ["FC13", "AIDR"]}  # fmt: skip
    assert series_characteristics(tmp_path / "missing.npz") == {}
    ref = build_reference(np.array([[0.1], [0.9]]), ["cardiomegaly"], [found, {}], {"m": "x"})
    assert ref["inputs"]["convolution_kernel"]["proportions"] == {"FC13\\AIDR": 1.0}
    assert ref["inputs"]["kvp"]["values"] == [100.0] and ref["statistics"]["kvp"] == "ks"


@pytest.mark.parametrize(("n", "quiet"), [(50, False), (200, True)])
def test_min_samples_default_keeps_clean_data_quiet(n: int, quiet: bool) -> None:
    # Why [monitor] min_samples defaults to 200: PSI's sampling noise on undrifted data.
    from agent.config_followup import MonitorSettings

    rng = np.random.default_rng(5)
    ref = score_reference(rng.beta(2, 5, 5000))
    false_alerts = np.mean([score_psi(ref, rng.beta(2, 5, n))[0] > 0.25 for _ in range(300)])
    assert (false_alerts < 0.01) == quiet
    assert MonitorSettings().min_samples == 200
