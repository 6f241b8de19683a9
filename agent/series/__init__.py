"""Series decisions: completeness, eligibility and the choice of one series per study.

Pure functions over plain :class:`~agent.series.facts.SeriesFacts`: nothing
here reads the database, the network or a file. :mod:`agent.intake` builds
facts from the database or a folder; the sweep records the verdicts,
``hyperct-agent explain`` prints them.
"""

from agent.series.completeness import Completeness, Geometry, judge_completeness
from agent.series.eligibility import Check, Eligibility, assess_eligibility
from agent.series.facts import SeriesFacts
from agent.series.selection import Selection, choose_series

__all__ = [
    "Check",
    "Completeness",
    "Eligibility",
    "Geometry",
    "Selection",
    "SeriesFacts",
    "assess_eligibility",
    "choose_series",
    "judge_completeness",
]
