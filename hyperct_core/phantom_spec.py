"""What a synthetic chest CT phantom shows: its findings and their HyperCT labels.

Findings (:class:`PhantomSpec`; :func:`labels` maps them to HyperCT task names):

============================  ===========================================  ==============
task                          what the phantom draws                       positive when
============================  ===========================================  ==============
cardiomegaly                  the heart scaled by ``heart_scale``          >= 1.2
pericardial_effusion          fluid rim (10 HU) of ``pericardial_mm``      >= 4 mm
pleural_effusion              dependent (posterior) fluid layer, depth     >= 10 mm
                              ``pleural_mm`` in the left/right/both lungs
emphysema                     low-attenuation (-985 HU) spherical holes    >= 0.05
                              covering ``emphysema_fraction`` of the lungs
arterial_wall_calcification   ``aortic_calcifications`` plaques (700-1000  >= 1
                              HU) on the aortic wall
coronary_artery_wall_calc.    ``coronary_calcifications`` plaques along    >= 1
                              the coronary courses on the heart surface
lung_nodule                   ``nodules`` solid spheres (30 HU) of         >= 1
                              ``nodule_mm`` diameter inside a lung
consolidation                 ``consolidations`` lobar-sized clusters of   >= 1
                              spheres (30 HU) inside a lung
medical_material              a pacemaker generator and lead (3000 HU)     True
============================  ===========================================  ==============

Between "absent" and "positive" lies a grey zone (e.g. heart_scale 1.05-1.2): a spec in
it is labelled by the rule above, but :func:`random_spec` never draws one, so sampled
datasets have a clean margin. Tasks the phantom does not encode are ``None`` (missing).


The phantom is drawn by :mod:`hyperct_core.phantom_anatomy`; :mod:`hyperct_core.phantoms`
is the entry point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from hyperct_core.tasks import TASK_NAMES

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "ENCODED_TASKS",
    "Phantom",
    "PhantomSpec",
    "labels",
    "random_spec",
    "with_findings",
]

# A series the agent screens under its default [eligibility] and [completeness]
# settings (slices <= 3 mm, >= 64 of them, >= 150 mm covered): 128 slices of 2.5 mm
# over 320 mm, in a ~360 mm field of view. The anatomy scales with the physical
# extent (320 mm, as at 64 x 5 mm), so a phantom looks the same to a model at either
# slice spacing. The demo model's recipe pins its own geometry (hyperct_core.demo).
DEFAULT_SHAPE: tuple[int, int, int] = (128, 128, 128)  # slices, rows, columns
DEFAULT_SPACING: tuple[float, float, float] = (2.5, 2.8, 2.8)  # mm

Side = Literal["left", "right", "both"]

# Label thresholds (see the module table).
CARDIOMEGALY_SCALE = 1.2
PERICARDIAL_MM = 4.0
PLEURAL_MM = 10.0
EMPHYSEMA_FRACTION = 0.05

ENCODED_TASKS: tuple[str, ...] = (
    "medical_material",
    "arterial_wall_calcification",
    "cardiomegaly",
    "pericardial_effusion",
    "coronary_artery_wall_calcification",
    "emphysema",
    "lung_nodule",
    "pleural_effusion",
    "consolidation",
)


@dataclass(frozen=True)
class PhantomSpec:
    """The findings of one phantom; the default is a normal chest.

    Attributes:
        heart_scale: Heart size relative to a normal adult heart (cardiomegaly >= 1.2).
        pericardial_mm: Thickness of the pericardial fluid rim around the heart.
        pleural_mm: Depth of dependent pleural fluid measured from the posterior lung edge.
        pleural_side: Which pleural space holds the fluid.
        emphysema_fraction: Fraction of lung volume turned into low-attenuation holes.
        aortic_calcifications: Number of calcified plaques on the aortic wall.
        coronary_calcifications: Number of calcified plaques along the coronary courses.
        nodules: Number of solid lung nodules.
        nodule_mm: Their diameter.
        consolidations: Number of consolidated regions.
        medical_material: A pacemaker generator with a lead into the heart.
        blood_pool_hu: Intravenous contrast: the HU of blood in the cardiac chambers,
            aorta, pulmonary trunk and superior vena cava (e.g. 250), with the
            myocardium enhanced to ``ENHANCED_MYOCARDIUM``; ``None`` draws an unenhanced
            chest (blood and myocardium ``BLOOD``, 40 HU). Not a finding: no label.
        seed: Seed of the anatomy (body size, positions of lesions); the noise too when
            :func:`make_volume` gets no generator.
    """

    heart_scale: float = 1.0
    pericardial_mm: float = 0.0
    pleural_mm: float = 0.0
    pleural_side: Side = "both"
    emphysema_fraction: float = 0.0
    aortic_calcifications: int = 0
    coronary_calcifications: int = 0
    nodules: int = 0
    nodule_mm: float = 14.0
    consolidations: int = 0
    medical_material: bool = False
    blood_pool_hu: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.heart_scale <= 2.0:
            raise ValueError(f"heart_scale must be in [0.5, 2], got {self.heart_scale}")
        for name in ("pericardial_mm", "pleural_mm", "nodule_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0.0 <= self.emphysema_fraction <= 0.6:
            raise ValueError("emphysema_fraction must be in [0, 0.6]")
        for name in ("aortic_calcifications", "coronary_calcifications", "nodules"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.consolidations < 0:
            raise ValueError("consolidations must be >= 0")
        if self.blood_pool_hu is not None and not -100 <= self.blood_pool_hu <= 1500:
            raise ValueError(f"blood_pool_hu must be in [-100, 1500], got {self.blood_pool_hu}")
        if self.pleural_side not in ("left", "right", "both"):
            raise ValueError(f"pleural_side must be left, right or both, not {self.pleural_side!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Phantom = PhantomSpec  # the short name used in docs and by the agent's demo


def labels(spec: PhantomSpec) -> dict[str, int | None]:
    """HyperCT label of every task for ``spec``: 1, 0, or None where not encoded."""
    encoded = {
        "medical_material": spec.medical_material,
        "arterial_wall_calcification": spec.aortic_calcifications >= 1,
        "cardiomegaly": spec.heart_scale >= CARDIOMEGALY_SCALE,
        "pericardial_effusion": spec.pericardial_mm >= PERICARDIAL_MM,
        "coronary_artery_wall_calcification": spec.coronary_calcifications >= 1,
        "emphysema": spec.emphysema_fraction >= EMPHYSEMA_FRACTION,
        "lung_nodule": spec.nodules >= 1 and spec.nodule_mm > 0,
        "pleural_effusion": spec.pleural_mm >= PLEURAL_MM,
        "consolidation": spec.consolidations >= 1,
    }
    return {name: (int(encoded[name]) if name in encoded else None) for name in TASK_NAMES}


def random_spec(
    rng: np.random.Generator,
    *,
    prevalence: float | dict[str, float] = 0.35,
    tasks: Sequence[str] = ENCODED_TASKS,
) -> PhantomSpec:
    """Draw findings independently, each present with its ``prevalence``.

    Values come from ranges with a margin around each label threshold, so every drawn
    spec is clearly positive or clearly negative. Tasks not in ``tasks`` stay normal.
    """
    unknown = set(tasks) - set(ENCODED_TASKS)
    if unknown:
        raise ValueError(f"the phantom does not encode {sorted(unknown)}")

    def present(task: str) -> bool:
        p = prevalence.get(task, 0.0) if isinstance(prevalence, dict) else prevalence
        return task in tasks and bool(rng.random() < p)

    sides: tuple[Side, ...] = ("left", "right", "both")
    return PhantomSpec(
        heart_scale=float(
            rng.uniform(1.3, 1.5) if present("cardiomegaly") else rng.uniform(0.9, 1.05)
        ),
        pericardial_mm=float(rng.uniform(10, 18)) if present("pericardial_effusion") else 0.0,
        pleural_mm=float(rng.uniform(25, 50)) if present("pleural_effusion") else 0.0,
        pleural_side=sides[int(rng.integers(3))],
        emphysema_fraction=float(rng.uniform(0.25, 0.4)) if present("emphysema") else 0.0,
        aortic_calcifications=int(rng.integers(3, 7))
        if present("arterial_wall_calcification")
        else 0,
        coronary_calcifications=int(rng.integers(2, 5))
        if present("coronary_artery_wall_calcification")
        else 0,
        nodules=int(rng.integers(1, 4)) if present("lung_nodule") else 0,
        nodule_mm=float(rng.uniform(16, 26)),
        consolidations=int(rng.integers(1, 3)) if present("consolidation") else 0,
        medical_material=present("medical_material"),
        seed=int(rng.integers(2**31)),
    )


def with_findings(spec: PhantomSpec, **changes: Any) -> PhantomSpec:
    """``spec`` with some findings changed (``dataclasses.replace``)."""
    return replace(spec, **changes)
