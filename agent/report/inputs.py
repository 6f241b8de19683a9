"""What a report is built from: the model that screened, and what it found.

Both are validated when constructed, so the SR builders never see a
probability outside [0, 1] or a task list out of order.

A task is *assessed* only where the model card gives it an operating point
(:func:`operating_points`); the others are reported "not assessed", never
"Absent", and never count towards the echo referral.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.errors import AgentError
from agent.report.uids import derive_uid
from hyperct_core.tasks import NUM_TASKS, TASK_NAMES, TASKS

if TYPE_CHECKING:
    from hyperct_core.checkpoint import ModelCard

#: Default referral tasks: the echo-derived ("opportunistic") tasks.
DEFAULT_REFERRAL_TASKS: tuple[str, ...] = tuple(t.name for t in TASKS if t.group == "opportunistic")


class ReportInputError(AgentError, ValueError):
    """Report inputs that cannot make a valid report (one line, no traceback)."""


def _check_tasks(names: Sequence[str], what: str) -> None:
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown:
        raise ReportInputError(f"{what}: unknown task {unknown[0]!r}")
    if len(set(names)) != len(names):
        raise ReportInputError(f"{what}: a task is listed twice")


def operating_points(card: ModelCard) -> dict[str, float]:
    """The tasks the card supports, each with its operating threshold.

    A task has an operating point when the card's ``thresholds`` gives it a
    number in [0, 1] (a missing or null entry has none) and, where the card
    records how its thresholds were chosen (``extra.operating_points.tasks``,
    written by ``model evaluate --write-thresholds``), that record lists it:
    the card's other thresholds are placeholders that were never evaluated
    ("tasks not listed keep their threshold"). An entry there with
    ``"validated": false`` (its validation AUC was below the minimum or its CI
    included 0.5, :mod:`hyperct_core.evaluate`) also removes the task, whatever
    ``thresholds`` says.
    """
    chosen = (card.extra.get("operating_points") or {}).get("tasks")
    points: dict[str, float] = {}
    for name in card.tasks:
        value = card.thresholds.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not 0.0 <= float(value) <= 1.0:
            continue
        if isinstance(chosen, Mapping):
            record = chosen.get(name)
            if not isinstance(record, Mapping) or record.get("validated") is False:
                continue
        points[name] = float(value)
    return points


def _check_thresholds(thresholds: Mapping[str, float], what: str) -> None:
    _check_tasks(list(thresholds), what)
    for name, value in thresholds.items():
        if not (isinstance(value, int | float) and 0.0 <= float(value) <= 1.0):
            raise ReportInputError(f"{what}: threshold of {name!r} must be in [0, 1]")


@dataclass(frozen=True)
class ModelIdentity:
    """The screening model as the reports name it (the agent's device, PS3.16 TID 1004).

    Attributes:
        name: Model name from the card (Algorithm Name, TID 4019).
        version: Model version from the card (Algorithm Version, TID 4019).
        weights_sha256: Digest of the weights; part of :attr:`device_uid`, so a
            retrained model under the same version is still a different device.
        is_demo: True for a model that was not validated (its reports say so).
        thresholds: Operating threshold per task that has an operating point in the
            model card (:func:`operating_points`); the other tasks are not assessed.
        referral_tasks: Tasks whose positive finding recommends an echocardiogram.
    """

    name: str
    version: str
    weights_sha256: str
    is_demo: bool
    thresholds: Mapping[str, float]
    referral_tasks: tuple[str, ...] = DEFAULT_REFERRAL_TASKS

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.version.strip():
            raise ReportInputError("model identity: name and version must not be empty")
        if not self.weights_sha256:
            raise ReportInputError("model identity: the weights digest must not be empty")
        _check_thresholds(self.thresholds, "model card thresholds")
        object.__setattr__(self, "thresholds", MappingProxyType(dict(self.thresholds)))
        object.__setattr__(self, "referral_tasks", tuple(self.referral_tasks))
        _check_tasks(self.referral_tasks, "model card referral_tasks")

    @property
    def device_uid(self) -> str:
        """UID of the agent as an observer device; changes with name, version or weights."""
        return derive_uid("device", self.name, self.version, self.weights_sha256)

    @classmethod
    def from_card(cls, card: ModelCard, weights_sha256: str) -> ModelIdentity:
        """The identity of a checkpoint: demo unless the card says it was validated."""
        referral = card.extra.get("referral_tasks") or DEFAULT_REFERRAL_TASKS
        return cls(
            name=card.name,
            version=card.version,
            weights_sha256=weights_sha256,
            is_demo=not card.validated,
            thresholds=operating_points(card),
            referral_tasks=tuple(referral),
        )


@dataclass(frozen=True)
class Findings:
    """The 25 task probabilities of one screened series, with the rule in force.

    Attributes:
        task_names: The 25 task names in model output order.
        probabilities: One probability per task, in [0, 1].
        thresholds: Threshold in force per assessed task (card, overridden by
            ``[referral].thresholds``); a task without one is not assessed.
        referral_tasks: Referral tasks in force (``[referral].tasks`` or the card's).
    """

    task_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    thresholds: Mapping[str, float]
    referral_tasks: tuple[str, ...]
    _by_name: Mapping[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(self.task_names)
        probs = tuple(float(p) for p in self.probabilities)
        if names != TASK_NAMES:
            raise ReportInputError(
                f"findings: expected the {NUM_TASKS} HyperCT tasks in index order"
            )
        if len(probs) != NUM_TASKS:
            raise ReportInputError(
                f"findings: expected {NUM_TASKS} probabilities, got {len(probs)}"
            )
        for name, p in zip(names, probs, strict=True):
            if not (math.isfinite(p) and 0.0 <= p <= 1.0):
                raise ReportInputError(f"findings: probability of {name!r} is not in [0, 1]")
        _check_thresholds(self.thresholds, "findings thresholds")
        _check_tasks(self.referral_tasks, "findings referral tasks")
        object.__setattr__(self, "task_names", names)
        object.__setattr__(self, "probabilities", probs)
        object.__setattr__(self, "thresholds", MappingProxyType(dict(self.thresholds)))
        object.__setattr__(self, "referral_tasks", tuple(self.referral_tasks))
        object.__setattr__(self, "_by_name", MappingProxyType(dict(zip(names, probs, strict=True))))

    def probability(self, task: str) -> float:
        return self._by_name[task]

    def is_assessed(self, task: str) -> bool:
        """True when the task has an operating point; otherwise it is "not assessed"."""
        return task in self.thresholds

    def is_present(self, task: str) -> bool:
        """Present at the operating threshold: probability >= threshold; never if not assessed."""
        return self.is_assessed(task) and self._by_name[task] >= self.thresholds[task]

    def status(self, task: str) -> str:
        """``"present"``, ``"absent"`` or ``"not assessed"``."""
        if not self.is_assessed(task):
            return "not assessed"
        return "present" if self.is_present(task) else "absent"

    @property
    def assessed_referral_tasks(self) -> tuple[str, ...]:
        """Referral tasks with an operating point, in task index order: the rule's inputs."""
        chosen = set(self.referral_tasks)
        return tuple(t for t in self.task_names if t in chosen and self.is_assessed(t))

    @classmethod
    def from_model(
        cls,
        probabilities: Sequence[float],
        model: ModelIdentity,
        *,
        referral_tasks: Sequence[str] = (),
        threshold_overrides: Mapping[str, float] | None = None,
    ) -> Findings:
        """Findings under the model card's rule with the site's overrides applied.

        ``referral_tasks`` and ``threshold_overrides`` are ``[referral].tasks`` and
        ``[referral].thresholds`` of ``agent.toml``; an empty task list keeps the card's.
        An override moves the threshold of a task the card assesses; it cannot make
        a task without an operating point assessed.
        """
        thresholds = dict(model.thresholds)
        for task, value in (threshold_overrides or {}).items():
            if task in thresholds:
                thresholds[task] = float(value)
        return cls(
            task_names=TASK_NAMES,
            probabilities=tuple(probabilities),
            thresholds=thresholds,
            referral_tasks=tuple(referral_tasks) or model.referral_tasks,
        )
