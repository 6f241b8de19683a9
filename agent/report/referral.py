"""The echo referral rule, decided once per screened series and quoted by every output.

Rule: recommend transthoracic echocardiography when any referral task's
probability is at or above that task's threshold in force. Only referral
tasks with an operating point in the model card take part; the others are
not assessed and can neither fire the rule nor count as negative.

Screening calls :func:`decide` once; the :class:`ReferralDecision` it returns
is stored with the job's results and handed to each report, so the SR, the
readable report, the summary page and the command line show one decision
even when the rule's inputs (card, ``[referral]``) change later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.report.inputs import Findings, ReportInputError

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

    @property
    def recommended(self) -> bool:
        return bool(self.fired)

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
        return {"thresholds": dict(self.thresholds), "unassessed": list(self.unassessed)}

    @classmethod
    def from_stored(
        cls, fired: list[str] | None, rule: Mapping[str, Any] | None
    ) -> ReferralDecision:
        """The decision as stored with a job (``referral_tasks`` and ``referral_rule``)."""
        rule = rule or {}
        thresholds = rule.get("thresholds") or {}
        return cls(
            fired=tuple(fired or ()),
            thresholds=tuple((str(t), float(v)) for t, v in thresholds.items()),
            unassessed=tuple(str(t) for t in rule.get("unassessed") or ()),
        )


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
