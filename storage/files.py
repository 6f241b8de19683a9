"""Received instances on disk: durable writes under names the agent derives.

A file name never comes from a UID verbatim (path traversal through crafted
UIDs is a known hole in DICOM receivers): every path component is a hash.
Bytes go to ``<root>/.tmp`` first, are fsync'd, and only then renamed into
``<root>/instances/...``; ``.tmp`` sits on the same file system so the rename
is atomic, and anything left there by a crash is swept at start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_TMP = ".tmp"
_INSTANCES = "instances"


class OutOfSpace(OSError):
    """Free space is below the configured watermark."""


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("ascii", "replace")).hexdigest()[:n]


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_durably(path: Path, chunks: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def report_rel_path(source_series_uid: str, sop_uid: str) -> str:
    """Storage path of a report the agent produced, relative to the root."""
    return f"reports/{_digest(source_series_uid, 16)}/{_digest(sop_uid, 32)}.dcm"


def derived_rel_path(study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
    """Storage path of an instance, relative to the root; content-addressed per SOP UID.

    The content hash is part of the name so that a different payload under a
    known SOP Instance UID never overwrites the file already recorded.
    """
    return (
        f"{_INSTANCES}/{_digest(study_uid, 16)}/{_digest(series_uid, 16)}/"
        f"{_digest(sop_uid, 32)}-{sha256[:16]}.dcm"
    )


@dataclass(frozen=True)
class StagedFile:
    """A temporary file waiting to be committed under its final name.

    Its write, fsync and the payload's hash run on worker threads (all release
    the GIL), overlapping the caller's header parsing and database work.
    """

    tmp_path: Path
    size: int
    _digest: Future[str]
    _synced: Future[None]

    @property
    def sha256(self) -> str:
        return self._digest.result()

    def wait_durable(self) -> None:
        self._synced.result()


class InstanceStore:
    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = root
        self._root = root.resolve()
        self.min_free_bytes = min_free_bytes
        self._tmp = root / _TMP
        # Renames and their database commits for the same final name are
        # serialised, so a failing commit never removes a file another
        # association has just recorded.
        self._locks = [threading.Lock() for _ in range(64)]
        self._known_dirs: set[Path] = set()
        self._workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="instance-io")

    def prepare(self) -> int:
        """Create the directories and sweep temp files a crash left; returns how many."""
        (self.root / _INSTANCES).mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        swept = 0
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
            swept += 1
        return swept

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, incoming: int) -> None:
        if self.free_bytes() - incoming < self.min_free_bytes:
            raise OutOfSpace("free space below the storage watermark")

    def stage(self, chunks: list[bytes], hashed: bytes) -> StagedFile:
        """Write ``chunks`` to a new temp file, fsync it and hash ``hashed``, on worker threads.

        Returns at once; :meth:`publish` waits for the write and the fsync.
        The free-space check happens here, before anything is written.
        """
        size = sum(len(c) for c in chunks)
        self.check_space(size)
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        digest = self._workers.submit(_sha256, hashed)
        return StagedFile(tmp, size, digest, self._workers.submit(_write_durably, tmp, chunks))

    def save(self, rel_path: str, data: bytes) -> Path:
        """Write ``data`` durably under ``rel_path`` (temp file, fsync, rename)."""
        staged = self.stage([data], data)
        try:
            return self.publish(staged, rel_path)
        except BaseException:
            self.discard(staged)
            raise

    def lock_for(self, rel_path: str) -> threading.Lock:
        return self._locks[hash(rel_path) % len(self._locks)]

    def publish(self, staged: StagedFile, rel_path: str) -> Path:
        """Atomically move a staged file to its final name and make the rename durable."""
        staged.wait_durable()  # never rename bytes that are not on disk yet
        final = self.path_of(rel_path)
        if final.parent not in self._known_dirs:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(final.parent)
        try:
            os.replace(staged.tmp_path, final)
        except FileNotFoundError:  # the directory was removed behind our back
            self._known_dirs.discard(final.parent)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.tmp_path, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def discard(self, staged: StagedFile) -> None:
        with contextlib.suppress(OSError):
            staged.wait_durable()  # the write job owns the file until it ends
        staged.tmp_path.unlink(missing_ok=True)

    def close(self) -> None:
        self._workers.shutdown(wait=True)

    def remove(self, rel_path: str) -> None:
        self.path_of(rel_path).unlink(missing_ok=True)

    def path_of(self, rel_path: str) -> Path:
        """Absolute path of a stored file; refuses anything that would leave the root."""
        rel = PurePosixPath(rel_path)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError("path escapes the storage root")
        return self._root / rel
