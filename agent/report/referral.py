"""The echo referral rule, decided once per screened series and quoted by every output.

Rule: recommend transthoracic echocardiography when any referral task's
probability is at or above that task's threshold in force. Only referral
tasks with an operating point in the model card take part; the others are
not assessed and can neither fire the rule nor count as negative.

Screening calls :func:`decide` once; the :class:`ReferralDecision` it returns
is stored with the job's results and handed to each report, so the SR, the
readable report, the summary page and the command line show one decision
even when the rule's inputs (card, ``[referral]``) change later.

One referral per patient episode: when the rule fires for a patient whose echo
was already recommended within ``repeat_days``, screening marks the decision
as a repeat (:meth:`ReferralDecision.as_repeat`) before any output is built,
and the mark is stored with the rule; every output then says "previously
recommended on DATE" (annotate) or does not recommend the echo again (suppress).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.report.inputs import Findings, ReportInputError

#: ``[referral] repeat_mode``: a repeat within an episode is said (annotate) or not
#: recommended again (suppress).
ANNOTATE = "annotate"
SUPPRESS = "suppress"

RULE_TEXT = (
    "Transthoracic echocardiography is recommended when the probability of any "
    "assessed referral finding is at or above its threshold."
)


@dataclass(frozen=True)
class ReferralDecision:
    """The rule as applied to one series.

    Attributes:
        fired: Assessed referral tasks at or above their threshold, in task
            index order; empty when the rule does not fire.
        thresholds: The rule's inputs: each assessed referral task with its
            threshold in force, in task index order.
        unassessed: Referral tasks without an operating point.
    """

    fired: tuple[str, ...]
    thresholds: tuple[tuple[str, float], ...]
    unassessed: tuple[str, ...]
    #: When the rule fired for a patient already referred within ``[referral]
    #: repeat_days``: the day the episode's echo was first recommended (DA,
    #: YYYYMMDD), and what the outputs do about it ("annotate" or "suppress").
    repeat_of: str | None = None
    repeat_mode: str | None = None

    @property
    def recommended(self) -> bool:
        """Whether this screening's outputs recommend an echo (a suppressed repeat does not)."""
        return bool(self.fired) and not self.suppressed

    @property
    def repeat(self) -> bool:
        """The rule fired, and the patient's echo was already recommended in this episode."""
        return bool(self.fired) and self.repeat_of is not None

    @property
    def suppressed(self) -> bool:
        return self.repeat and self.repeat_mode == SUPPRESS

    def repeat_line(self) -> str | None:
        """What every output says about an earlier recommendation; None when there is none."""
        if not self.repeat:
            return None
        day = readable_date(self.repeat_of)
        if self.suppressed:
            return f"Echocardiography already recommended on {day}: not recommended again"
        return f"Echocardiography previously recommended on {day}"

    def as_repeat(self, referred_on: str, mode: str) -> ReferralDecision:
        """This decision for a patient whose echo was first recommended on ``referred_on``."""
        if mode not in (ANNOTATE, SUPPRESS):
            raise ValueError(f"repeat mode must be {ANNOTATE!r} or {SUPPRESS!r}, not {mode!r}")
        return replace(self, repeat_of=referred_on, repeat_mode=mode)

    @property
    def assessed(self) -> tuple[str, ...]:
        """The referral tasks that took part in the rule."""
        return tuple(task for task, _ in self.thresholds)

    def parameters(self) -> list[str]:
        """The rule as ``task>=threshold`` strings (TID 4019 Algorithm Parameters)."""
        return [f"{task}>={threshold:g}" for task, threshold in self.thresholds]

    def check(self, findings: Findings) -> None:
        """Refuse a decision made under another rule than ``findings`` carry."""
        rule = tuple((t, findings.thresholds[t]) for t in findings.assessed_referral_tasks)
        if rule != self.thresholds:
            raise ReportInputError("referral decision: made under another rule than the findings")

    def rule_record(self) -> dict[str, Any]:
        """The rule's inputs as stored with the job (JSON); ``fired`` has columns of its own."""
        record: dict[str, Any] = {
            "thresholds": dict(self.thresholds),
            "unassessed": list(self.unassessed),
        }
        if self.repeat:
            record["repeat"] = {"of": self.repeat_of, "mode": self.repeat_mode}
        return record

    @classmethod
    def from_stored(
        cls, fired: list[str] | None, rule: Mapping[str, Any] | None
    ) -> ReferralDecision:
        """The decision as stored with a job (``referral_tasks`` and ``referral_rule``)."""
        rule = rule or {}
        thresholds = rule.get("thresholds") or {}
        repeat = rule.get("repeat") or {}
        return cls(
            fired=tuple(fired or ()),
            thresholds=tuple((str(t), float(v)) for t, v in thresholds.items()),
            unassessed=tuple(str(t) for t in rule.get("unassessed") or ()),
            repeat_of=repeat.get("of"),
            repeat_mode=repeat.get("mode"),
        )


def readable_date(da: str | None) -> str:
    """A DA value (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    value = (da or "").replace(".", "")
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return da or "an unknown date"


def decide(findings: Findings) -> ReferralDecision:
    """Apply the rule to ``findings``: the one place it is evaluated."""
    assessed = findings.assessed_referral_tasks
    chosen = set(findings.referral_tasks)
    return ReferralDecision(
        fired=tuple(t for t in assessed if findings.is_present(t)),
        thresholds=tuple((t, float(findings.thresholds[t])) for t in assessed),
        unassessed=tuple(
            t for t in findings.task_names if t in chosen and not findings.is_assessed(t)
        ),
    )


def decision_for(findings: Findings, decision: ReferralDecision | None) -> ReferralDecision:
    """``decision`` checked against ``findings``; decided here only when none was given."""
    if decision is None:
        return decide(findings)
    decision.check(findings)
    return decision


def referral(findings: Findings) -> list[str]:
    """Assessed referral tasks whose probability >= their threshold, in task index order.

    An empty list means the rule does not fire.
    """
    return list(decide(findings).fired)
