"""The result of one monitoring check, as stored in ``monitor_checks`` and said to people."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.monitor.card import NO_REFERENCE

OK, ALERT, TOO_FEW, NOT_AVAILABLE = "ok", "alert", "too few samples", "not available"


@dataclass(frozen=True)
class CheckResult:
    """One comparison: ``value`` None when it could not be computed (``status`` says why)."""

    kind: str  # "score" | "input" | "drift" (the reference itself) | "performance"
    name: str
    statistic: str  # "psi" | "ks" | "none" | "auc"
    value: float | None
    threshold: float | None
    n: int
    status: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def alert(self) -> bool:
        return self.status == ALERT

    def sentence(self) -> str:
        """One line for people: what was compared and what came of it."""
        what = f"{self.kind} {self.name}"
        if self.status == NOT_AVAILABLE:
            return str(self.detail.get("reason", NO_REFERENCE))
        if self.status == TOO_FEW:
            return (f"{what}: too few samples ({self.n} < {self.detail.get('min_samples')}); "
                    "no statistic, no alert")  # fmt: skip
        if self.threshold is None:  # a figure, not a test: live AUC against echo outcomes
            d = self.detail
            return (f"{what}: {self.statistic.upper()} {self.value:.3f} "
                    f"[{d.get('ci_low', float('nan')):.3f}, {d.get('ci_high', float('nan')):.3f}] "
                    f"(n={self.n}, positives={d.get('positives')})")  # fmt: skip
        verdict = "ALERT" if self.alert else "ok"
        return (f"{what}: {self.statistic.upper()} {self.value:.3f} (alert above "
                f"{self.threshold:g}, n={self.n}) {verdict}")  # fmt: skip
