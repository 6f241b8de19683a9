"""QIDO-RS finding (PS3.18 10.6, Search Transaction) for archives with a DICOMweb URL.

The same questions as :class:`~agent.backfill.query.StudyRootFind`, over
HTTP: ``{base}/studies?StudyDate=...&StudyTime=...`` then
``{base}/studies/{uid}/series``, answers in the DICOM JSON model (PS3.18
F.2) read with :meth:`pydicom.dataset.Dataset.from_json`. A result cut short
says so with ``Warning: 299`` (PS3.18 8.3.4.4) or ``413 Payload Too Large``;
the day is then split like a C-FIND one.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from agent.backfill.find import (
    SERIES_KEYS,
    STUDY_KEYS,
    ArchiveError,
    FindResult,
    TimeRange,
    keep_only,
)
from agent.config_backfill import Archive
from agent.node.tls import client_context

_MEDIA_TYPE = "application/dicom+json"


class QidoFind:
    """QIDO-RS Search for Studies and Search for Series (PS3.18 10.6.1)."""

    def __init__(self, archive: Archive, timeout: float = 60.0) -> None:
        if not archive.dicomweb_url:
            raise ArchiveError(f"archive {archive.name!r} has no dicomweb_url")
        self.archive = archive
        self.base = archive.dicomweb_url.rstrip("/")
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if archive.tls is not None and self.base.startswith("https:"):
            self._context = client_context(archive.tls, f"[[archives]] {archive.name!r}.tls")

    def studies(self, day: str, times: TimeRange | None) -> FindResult:
        params: list[tuple[str, str]] = [("StudyDate", day)]
        if times is not None:
            params.append(("StudyTime", times.dicom()))
        params += [("includefield", key) for key in STUDY_KEYS]
        return self._search("/studies", params, STUDY_KEYS)

    def series(self, study_instance_uid: str) -> FindResult:
        uid = urllib.parse.quote(study_instance_uid, safe="")
        params = [("includefield", key) for key in SERIES_KEYS]
        return self._search(f"/studies/{uid}/series", params, SERIES_KEYS)

    def close(self) -> None:
        pass

    def _where(self) -> str:
        return f"archive {self.archive.name!r} ({self.base})"

    def _search(self, path: str, params: list[tuple[str, str]], keys: Sequence[str]) -> FindResult:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers={"Accept": _MEDIA_TYPE})
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._context
            ) as response:
                body = response.read()
                warnings = response.headers.get_all("Warning") or []
                status = response.status
        except urllib.error.HTTPError as exc:
            if exc.code == 413:  # the query matched more than the archive returns
                return FindResult(complete=False)
            raise ArchiveError(
                f"{self._where()}: QIDO-RS {path.split('?')[0]} answered HTTP {exc.code}"
                f" {exc.reason}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ArchiveError(f"{self._where()}: QIDO-RS unreachable: {reason}") from None
        result = FindResult(complete=not any(w.lstrip().startswith("299") for w in warnings))
        if status == 204 or not body.strip():
            return result
        try:
            items: Any = json.loads(body)
        except ValueError:
            raise ArchiveError(
                f"{self._where()}: QIDO-RS answer is not JSON (expected {_MEDIA_TYPE})"
            ) from None
        if not isinstance(items, list):
            raise ArchiveError(f"{self._where()}: QIDO-RS answer is not a JSON array")
        wanted = _json_tags(keys)
        for item in items:
            try:
                # Only the asked attributes are parsed: patient ones are never even read.
                asked = {k: v for k, v in item.items() if str(k).upper() in wanted}
                result.answers.append(keep_only(Dataset.from_json(asked), keys))
            except Exception:  # any shape pydicom cannot read is one malformed answer
                result.malformed += 1
        return result


def _json_tags(keys: Sequence[str]) -> set[str]:
    """The DICOM JSON names (``"0020000D"``) of ``keys`` and the ones always kept."""
    names = {*keys, "SpecificCharacterSet", "StudyInstanceUID"}
    return {f"{tag:08X}" for k in names if (tag := tag_for_keyword(k)) is not None}
