"""WADO-RS retrieve of one series from an archive's DICOMweb base URL (PS3.18 10.4).

``GET {base}/studies/{study}/series/{series}`` with ``Accept: multipart/related;
type="application/dicom"`` answers every instance as one Part 10 file per part
of a multipart/related body (RFC 2387), read here with the standard library's
email parser. Each instance goes through the node's receive path
(:meth:`agent.node.handlers.NodeHandlers.receive_encoded`), as if the archive
had sent it by C-STORE: the same checks, store and rows.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from email.parser import BytesParser
from email.policy import HTTP
from io import BytesIO
from urllib.parse import quote

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from agent.backfill.types import RetrieveOutcome, SeriesRef
from agent.config_backfill import Archive
from agent.node import status
from agent.node.handlers import NodeHandlers
from agent.node.server import decodable_transfer_syntaxes

ACCEPT = 'multipart/related; type="application/dicom"'
#: Part 10 preamble (128) + "DICM" (4) + the File Meta Information Group Length element (12).
_META_START = 132
_GROUP_LENGTH_END = _META_START + 12


def parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related response, in order."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ValueError(f"expected multipart/related, got {message.get_content_type()}")
    out = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            out.append(payload)
    return out


def split_part10(data: bytes) -> tuple[str, str, UID, bytes]:
    """(SOP Class UID, SOP Instance UID, transfer syntax, data set bytes) of a Part 10 file."""
    try:
        meta = dcmread(BytesIO(data), stop_before_pixels=True).file_meta
    except (InvalidDicomError, EOFError, ValueError) as exc:
        raise ValueError(f"not a DICOM file: {exc}") from None
    length = meta.get("FileMetaInformationGroupLength")
    if length is None or data[128:132] != b"DICM":
        raise ValueError("no File Meta Information Group Length (PS3.10 7.1)")
    start = _GROUP_LENGTH_END + int(length)
    return (
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        UID(str(meta.TransferSyntaxUID)),
        data[start:],
    )


class WadoRetriever:
    """Fetches a series by WADO-RS and stores each instance through the node's handlers."""

    def __init__(
        self,
        archive: Archive,
        handlers: NodeHandlers,
        accepted_sop_classes: tuple[str, ...],
        timeout: float = 600.0,
    ) -> None:
        assert archive.dicomweb_url
        # What the node's presentation contexts would have accepted by C-STORE.
        self.accepted = frozenset(accepted_sop_classes)
        self.syntaxes = frozenset(decodable_transfer_syntaxes())
        self.archive = archive
        self.base = archive.dicomweb_url.rstrip("/")
        self.handlers = handlers
        self.timeout = timeout

    def _context(self) -> ssl.SSLContext | None:
        tls = self.archive.tls
        if tls is None or not self.base.startswith("https:"):
            return None
        context = ssl.create_default_context(cafile=str(tls.ca_certificates))
        if tls.certificate is not None:
            context.load_cert_chain(str(tls.certificate), str(tls.private_key))
        context.check_hostname = tls.verify_hostname
        return context

    def retrieve(self, series: SeriesRef) -> RetrieveOutcome:
        url = (
            f"{self.base}/studies/{quote(series.study_instance_uid)}"
            f"/series/{quote(series.series_instance_uid)}"
        )
        request = urllib.request.Request(url, headers={"Accept": ACCEPT})
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._context()
            ) as response:
                body = response.read()
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return RetrieveOutcome(None, error=f"archive answered HTTP {exc.code} {exc.reason}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return RetrieveOutcome(None, error=f"archive unreachable: {reason}")
        try:
            instances = parts(content_type, body)
        except ValueError as exc:
            return RetrieveOutcome(None, error=f"unreadable WADO-RS response: {exc}")
        completed = failed = 0
        for data in instances:
            if self._store(data):
                completed += 1
            else:
                failed += 1
        return RetrieveOutcome(0x0000 if not failed else 0xB000, completed=completed,
                               failed=failed)  # fmt: skip

    def _store(self, data: bytes) -> bool:
        try:
            sop_class, sop_instance, syntax, dataset = split_part10(data)
        except ValueError:
            return False
        if sop_class not in self.accepted or syntax not in self.syntaxes:
            return False
        answer = self.handlers.receive_encoded(
            sop_class, sop_instance, syntax, dataset, self.archive.ae_title
        )
        code = answer if isinstance(answer, int) else int(answer.Status)
        return code == status.SUCCESS or _is_warning(answer)


def _is_warning(answer: int | Dataset) -> bool:
    code = answer if isinstance(answer, int) else int(answer.Status)
    return code in (0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF
