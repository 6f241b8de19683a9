"""The 25 HyperCT tasks.

The index of a task is part of the checkpoint format: the task-embedding table of the
hypernetwork has one row per index, so this order must never change. New tasks would be
appended and require a new checkpoint.

Labels are 1 (present), 0 (absent) or missing. The seven opportunistic tasks carry labels
from a transthoracic echocardiogram paired with the CT; the eighteen conventional tasks
carry labels extracted from the CT's own radiology report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hyperct_core.errors import HyperCTError

TaskGroup = Literal["opportunistic", "conventional"]

_REPORTED = "reported as present in the radiology report of the CT"


class UnknownTaskError(HyperCTError, LookupError):
    """A task name that is not one of the 25 HyperCT tasks."""


@dataclass(frozen=True)
class Task:
    """One binary screening task.

    Attributes:
        index: Row of the task embedding; position in the model's output.
        name: Stable machine name (used in checkpoints, reports and configuration).
        display_name: Human-readable name for reports.
        group: ``"opportunistic"`` (echo-derived label) or ``"conventional"``
            (report-derived label).
        definition: What a positive label means clinically.
    """

    index: int
    name: str
    display_name: str
    group: TaskGroup
    definition: str


def _echo(index: int, name: str, display: str, criterion: str) -> Task:
    return Task(index, name, display, "opportunistic", f"{criterion} on echocardiography")


def _report(index: int, name: str, display: str, finding: str) -> Task:
    return Task(index, name, display, "conventional", f"{finding} {_REPORTED}")


TASKS: tuple[Task, ...] = (
    _echo(
        0,
        "reduced_rv_systolic_function",
        "Reduced RV systolic function",
        "Right ventricular systolic function graded other than normal",
    ),
    _echo(
        1,
        "reduced_lv_systolic_function",
        "Reduced LV systolic function",
        "LVEF < 50 %",
    ),
    _echo(2, "pulmonary_hypertension", "Pulmonary hypertension", "PASP > 35 mmHg"),
    _echo(
        3,
        "atrial_chamber_enlargement",
        "Atrial chamber enlargement",
        "Left atrial volume index > 34-35 mL/m2",
    ),
    _echo(
        4,
        "ventricular_enlargement",
        "Ventricular enlargement",
        "LV internal diameter in diastole > 5.3 cm (female) or > 5.9 cm (male)",
    ),
    _echo(
        5,
        "left_atrial_filling_pressure",
        "Elevated left atrial filling pressure",
        "E/A ratio >= 2, or left atrial volume index > 34 mL/m2, "
        "or tricuspid regurgitation velocity > 2.8 m/s",
    ),
    _echo(
        6,
        "right_atrial_filling_pressure",
        "Elevated right atrial filling pressure",
        "Tricuspid regurgitation velocity > 3.4 m/s",
    ),
    _report(
        7,
        "medical_material",
        "Medical material",
        "Medical material (devices, lines, tubes, implants, surgical material)",
    ),
    _report(
        8,
        "arterial_wall_calcification",
        "Arterial wall calcification",
        "Arterial wall calcification",
    ),
    _report(9, "cardiomegaly", "Cardiomegaly", "Cardiomegaly"),
    _report(10, "pericardial_effusion", "Pericardial effusion", "Pericardial effusion"),
    _report(
        11,
        "coronary_artery_wall_calcification",
        "Coronary artery wall calcification",
        "Coronary artery wall calcification",
    ),
    _report(12, "hiatal_hernia", "Hiatal hernia", "Hiatal hernia"),
    _report(13, "lymphadenopathy", "Lymphadenopathy", "Lymphadenopathy"),
    _report(14, "emphysema", "Emphysema", "Emphysema"),
    _report(15, "atelectasis", "Atelectasis", "Atelectasis"),
    _report(16, "lung_nodule", "Lung nodule", "Lung nodule"),
    _report(17, "lung_opacity", "Lung opacity", "Lung opacity"),
    _report(
        18,
        "pulmonary_fibrotic_sequela",
        "Pulmonary fibrotic sequela",
        "Pulmonary fibrotic sequela",
    ),
    _report(19, "pleural_effusion", "Pleural effusion", "Pleural effusion"),
    _report(
        20,
        "mosaic_attenuation_pattern",
        "Mosaic attenuation pattern",
        "Mosaic attenuation pattern",
    ),
    _report(
        21,
        "peribronchial_thickening",
        "Peribronchial thickening",
        "Peribronchial thickening",
    ),
    _report(22, "consolidation", "Consolidation", "Consolidation"),
    _report(23, "bronchiectasis", "Bronchiectasis", "Bronchiectasis"),
    _report(
        24,
        "interlobular_septal_thickening",
        "Interlobular septal thickening",
        "Interlobular septal thickening",
    ),
)

NUM_TASKS = len(TASKS)
TASK_NAMES: tuple[str, ...] = tuple(task.name for task in TASKS)

_BY_NAME = {task.name: task for task in TASKS}


def task_by_name(name: str) -> Task:
    """Return the task called ``name``; raise :class:`UnknownTaskError` otherwise."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise UnknownTaskError(
            f"unknown HyperCT task {name!r}; expected one of the {NUM_TASKS} task names "
            f"(e.g. {TASK_NAMES[0]!r}, {TASK_NAMES[-1]!r})"
        ) from None
