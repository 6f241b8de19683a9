"""Series decisions: completeness, eligibility and the choice of one series per study.

Pure functions over :class:`~agent.series.facts.SeriesFacts`; the scheduler
builds facts from the database and records the verdicts, ``hyperct-agent
explain`` prints them.
"""

from agent.series.completeness import Completeness, Geometry, judge_completeness
from agent.series.eligibility import Check, Eligibility, assess_eligibility
from agent.series.facts import (
    SeriesFacts,
    SeriesNotFound,
    facts_from_db,
    facts_from_files,
    study_facts_from_db,
)
from agent.series.selection import Selection, choose_series

__all__ = [
    "Check",
    "Completeness",
    "Eligibility",
    "Geometry",
    "Selection",
    "SeriesFacts",
    "SeriesNotFound",
    "assess_eligibility",
    "choose_series",
    "facts_from_db",
    "facts_from_files",
    "judge_completeness",
    "study_facts_from_db",
]
