"""The echo referral rule, stated once so both reports quote the same thing.

Rule: recommend transthoracic echocardiography when any referral task's
probability is at or above that task's threshold in force.
"""

from __future__ import annotations

from agent.report.inputs import Findings

RULE_TEXT = (
    "Transthoracic echocardiography is recommended when the probability of any "
    "referral finding is at or above its threshold."
)


def referral(findings: Findings) -> list[str]:
    """Referral tasks whose probability >= their threshold, in task index order.

    An empty list means the rule does not fire.
    """
    chosen = set(findings.referral_tasks)
    return [t for t in findings.task_names if t in chosen and findings.is_present(t)]


def rule_parameters(findings: Findings) -> list[str]:
    """The rule as ``task>=threshold`` strings (TID 4019 Algorithm Parameters)."""
    return [
        f"{t}>={findings.thresholds[t]:g}"
        for t in findings.task_names
        if t in set(findings.referral_tasks)
    ]
