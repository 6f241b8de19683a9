"""The echo referral rule, stated once so both reports quote the same thing.

Rule: recommend transthoracic echocardiography when any referral task's
probability is at or above that task's threshold in force. Only referral
tasks with an operating point in the model card take part; the others are
not assessed and can neither fire the rule nor count as negative.
"""

from __future__ import annotations

from agent.report.inputs import Findings

RULE_TEXT = (
    "Transthoracic echocardiography is recommended when the probability of any "
    "assessed referral finding is at or above its threshold."
)


def referral(findings: Findings) -> list[str]:
    """Assessed referral tasks whose probability >= their threshold, in task index order.

    An empty list means the rule does not fire.
    """
    return [t for t in findings.assessed_referral_tasks if findings.is_present(t)]


def unassessed_referral_tasks(findings: Findings) -> list[str]:
    """Referral tasks without an operating point (reported "not assessed")."""
    chosen = set(findings.referral_tasks)
    return [t for t in findings.task_names if t in chosen and not findings.is_assessed(t)]


def rule_parameters(findings: Findings) -> list[str]:
    """The rule as ``task>=threshold`` strings (TID 4019 Algorithm Parameters)."""
    return [f"{t}>={findings.thresholds[t]:g}" for t in findings.assessed_referral_tasks]
