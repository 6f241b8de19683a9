"""Settings of the follow-up: patient pseudonyms, echo outcomes, monitoring."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from agent.config_base import Section

Days = Annotated[int, Field(ge=0, le=3650)]


class PatientSettings(Section):
    """The keyed pseudonym of (Issuer of Patient ID, Patient ID) and of Accession Number.

    The key never enters the database: empty ``pseudonym_key`` generates one
    once under the storage root (``patient-pseudonym.key``), which must then be
    backed up with the database (a new key starts every patient anew).
    """

    pseudonym_key: str = ""


class OutcomeSettings(Section):
    """Echo outcomes in: matched to the CT closest in time within ``match_days``."""

    match_days: Days = 180
    # Accept echo Structured Reports (TID 5200) by C-STORE and turn them into outcomes.
    accept_echo_sr: bool = True


class MonitorSettings(Section):
    """Live performance and drift against the model card's validation distributions."""

    enabled: bool = True
    check_minutes: Annotated[float, Field(gt=0, strict=False)] = 60.0
    window_days: Annotated[int, Field(ge=1, le=3650)] = 90
    # Fewer live values in a window: no statistic, no alert. PSI over 10 bins has a sampling
    # floor of about 9/n without any drift: at 50 values clean data passes 0.25 about a
    # third of the time, at 200 practically never (and KS's noise is ~1.36/sqrt(n)).
    min_samples: Annotated[int, Field(ge=1)] = 200
    # Population stability index of a score or input distribution against the card's;
    # 0.1-0.25 is a moderate shift, above 0.25 a major one (the usual reading).
    psi_alert: Annotated[float, Field(gt=0, strict=False)] = 0.25
    # Kolmogorov-Smirnov distance (0-1) of a continuous input (kVp, slice thickness) above
    # which an alert is raised: the largest share of series whose place in the distribution
    # moved. KS, not PSI, because those values sit on a few protocol settings.
    ks_alert: Annotated[float, Field(gt=0, le=1, strict=False)] = 0.2
