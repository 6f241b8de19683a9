"""The task registry: its order is part of the checkpoint format."""

from __future__ import annotations

import dataclasses

import pytest

from hyperct_core.errors import HyperCTError
from hyperct_core.tasks import TASK_NAMES, TASKS, Task, UnknownTaskError, task_by_name

# The spec's index order, written out independently of the module: a reordering in
# tasks.py would silently remap every checkpoint's task embeddings.
SPEC_ORDER = [
    "reduced_rv_systolic_function",
    "reduced_lv_systolic_function",
    "pulmonary_hypertension",
    "atrial_chamber_enlargement",
    "ventricular_enlargement",
    "left_atrial_filling_pressure",
    "right_atrial_filling_pressure",
    "medical_material",
    "arterial_wall_calcification",
    "cardiomegaly",
    "pericardial_effusion",
    "coronary_artery_wall_calcification",
    "hiatal_hernia",
    "lymphadenopathy",
    "emphysema",
    "atelectasis",
    "lung_nodule",
    "lung_opacity",
    "pulmonary_fibrotic_sequela",
    "pleural_effusion",
    "mosaic_attenuation_pattern",
    "peribronchial_thickening",
    "consolidation",
    "bronchiectasis",
    "interlobular_septal_thickening",
]


def test_names_follow_spec_index_order() -> None:
    assert tuple(SPEC_ORDER) == TASK_NAMES
    assert [t.index for t in TASKS] == list(range(len(SPEC_ORDER)))


def test_groups_split_seven_echo_then_eighteen_report_tasks() -> None:
    groups = [t.group for t in TASKS]
    assert groups == ["opportunistic"] * 7 + ["conventional"] * 18
    assert all("echocardiography" in t.definition for t in TASKS if t.group == "opportunistic")
    assert all("radiology report" in t.definition for t in TASKS if t.group == "conventional")


def test_echo_thresholds_are_in_definitions() -> None:
    assert "LVEF < 50 %" in task_by_name("reduced_lv_systolic_function").definition
    assert "35 mmHg" in task_by_name("pulmonary_hypertension").definition
    assert "3.4 m/s" in task_by_name("right_atrial_filling_pressure").definition


def test_display_names_are_unique_and_readable() -> None:
    displays = [t.display_name for t in TASKS]
    assert len(set(displays)) == len(displays)
    assert all(d and d[0].isupper() and "_" not in d for d in displays)


def test_lookup_by_name_round_trips() -> None:
    for task in TASKS:
        assert task_by_name(task.name) is task


@pytest.mark.parametrize("bad", ["Cardiomegaly", "lung nodule", "", 7])
def test_unknown_name_raises_clear_error(bad: object) -> None:
    with pytest.raises(UnknownTaskError, match="unknown HyperCT task") as info:
        task_by_name(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, HyperCTError)
    assert isinstance(info.value, LookupError)
    assert "\n" not in str(info.value)


def test_task_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS[0].index = 3  # type: ignore[misc]
    assert isinstance(TASKS[0], Task)
