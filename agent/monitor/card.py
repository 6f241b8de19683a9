"""The model card as monitoring needs it, read as JSON (no torch, no weights).

The card is the one ``serve`` screens with: ``[model].checkpoint``, else the bundled
demo model. Its ``extra.reference_distributions`` (written by ``model evaluate
--write-thresholds``, :mod:`hyperct_core.reference`) is what drift is measured against;
a card without it has no drift reference and drift is "not available".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from agent.config import ModelSettings
from agent.errors import AgentError

CARD_NAME = "card.json"

NO_REFERENCE = (
    "drift is not available: the model card has no reference distributions "
    "(re-run `hyperct-agent model evaluate ... --write-thresholds` to record them)"
)


@dataclass(frozen=True)
class CardView:
    """What monitoring reads of a model card."""

    name: str
    version: str
    tasks: list[str]
    thresholds: dict[str, float]
    reference: dict[str, Any] | None
    path: Path
    held_out: dict[str, Any] = field(default_factory=dict)


def card_path(settings: ModelSettings) -> Path:
    """card.json of the configured checkpoint (a folder or its weights file), else the demo's."""
    if settings.checkpoint is None:
        return Path(str(resources.files("hyperct_core").joinpath("demo_model", CARD_NAME)))
    path = Path(settings.checkpoint)
    return path / CARD_NAME if path.is_dir() else path.with_name(CARD_NAME)


def read_card_view(settings: ModelSettings) -> CardView:
    """The serving model's card; one :class:`AgentError` line when it cannot be read."""
    path = card_path(settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        extra = data.get("extra") or {}
        points = (extra.get("operating_points") or {}).get("tasks") or {}
        reference = extra.get("reference_distributions")
        if reference is not None:
            _check_reference(reference)
        return CardView(
            name=str(data["name"]),
            version=str(data["version"]),
            tasks=[str(t) for t in data["tasks"]],
            thresholds={str(k): float(v) for k, v in (data.get("thresholds") or {}).items()},
            reference=reference,
            path=path,
            held_out={t: p.get("held_out") for t, p in points.items() if p.get("held_out")},
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AgentError(f"cannot read the model card {path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AgentError(f"model card {path} is malformed: {exc!r}") from None


def _check_reference(reference: Any) -> None:
    """Refuse a reference the comparisons could not read (KeyError/TypeError/ValueError)."""
    for ref in reference["scores"].values():
        if len(ref["proportions"]) != len(ref["edges"]) + 1:
            raise ValueError("score bins and proportions disagree")
    for ref in reference["inputs"].values():
        if ref["kind"] == "categorical":
            dict(ref["proportions"])
        elif len(ref["values"]) != len(ref["cdf"]):
            raise ValueError("a continuous input's values and cdf disagree")
