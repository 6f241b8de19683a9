"""Settings of archive backfill: the archives to query and how retrieval is paced."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from agent.backfill.pacing import WindowError, parse_window
from agent.config_base import AETitle, DestinationTLS, Port, PositiveSeconds, Section


class Archive(Section):
    """A PACS or archive the agent queries (C-FIND, study root) and retrieves from."""

    name: Annotated[str, Field(min_length=1)]
    ae_title: AETitle
    host: str
    port: Port
    tls: DestinationTLS | None = None
    query_model: Literal["study_root"] = "study_root"
    # move: C-MOVE to the agent's own AE title (the archive must know it);
    # get: C-GET on the query association, for archives that cannot reach back.
    retrieve: Literal["move", "get"] = "move"
    # Optional DICOMweb base URL (QIDO-RS to find, WADO-RS to retrieve) instead of DIMSE.
    dicomweb_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    # The most matches the archive returns for one query (Orthanc's LimitFindResults,
    # a PACS's "max results"). A slice of a day that returns this many is split by
    # Study Time so none is hidden; an archive that says so itself (status Cancel or
    # Out of Resources, PS3.4 C.4.1.1.4) is split without it.
    find_limit: Annotated[int, Field(ge=1)] | None = None


class BackfillSettings(Section):
    """How a campaign is retrieved: windows, concurrency, rate, retries, reports."""

    # results: results in the database only, for review; pacs: reports sent like live ones.
    reports: Literal["results", "pacs"] = "results"
    # When retrieves may run, e.g. ["mon-fri 20:00-06:00", "sat-sun 00:00-24:00"]
    # (local time); empty: at any time.
    windows: list[str] = []
    max_concurrent: Annotated[int, Field(ge=1, le=16)] = 2
    series_per_hour: Annotated[int, Field(ge=1)] = 60
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    retry_seconds: PositiveSeconds = 300.0

    @field_validator("windows")
    @classmethod
    def _windows_read(cls, windows: list[str]) -> list[str]:
        for window in windows:
            try:
                parse_window(window)
            except WindowError as exc:
                raise ValueError(str(exc)) from None
        return windows
