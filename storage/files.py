"""Received instances on disk: durable writes under names the agent derives.

A file name never comes from a UID verbatim (path traversal through crafted
UIDs is a known hole in DICOM receivers): every path component is a hash.
Bytes go to ``<root>/.tmp`` first, are fsync'd, and only then renamed into
``<root>/instances/...``; ``.tmp`` sits on the same file system so the rename
is atomic, and anything left there by a crash is swept at start.

Where the file system allows it, instance files are written with direct I/O
(``O_DIRECT``): the bytes go from an aligned buffer to the device without
passing through the page cache. On the 2-core reference machine, filling fresh
page-cache pages and then flushing them took 1.9 ms per 512 KiB image under
ingest load; direct I/O took 0.7 ms and half the kernel CPU. Nothing reads an
instance again until its series is screened, so the cache bought nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import shutil
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_TMP = ".tmp"
_INSTANCES = "instances"
_OUTCOMES = "outcomes"  # received echo reports (agent.outcomes), never instances
#: A temp file another host is writing is swept only after this long (its writer
#: cannot be asked whether it lives); an instance is written in far less.
FOREIGN_TMP_SECONDS = 3600.0
# Temp files are named "<host>~<pid>~<random>.part": who writes them.
_TMP_OWNER = "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())


def _orphaned(path: Path) -> bool:
    """A temp file whose writer is gone (or a name not written by this code)."""
    parts = path.name.split("~")
    if len(parts) != 3 or not parts[1].isdigit():
        return True
    host, pid = parts[0], int(parts[1])
    if host != _TMP_OWNER:
        try:
            return time.time() - path.stat().st_mtime > FOREIGN_TMP_SECONDS
        except OSError:
            return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class OutOfSpace(OSError):
    """Free space is below the configured watermark."""


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("ascii", "replace")).hexdigest()[:n]


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# Direct I/O needs the buffer address, length and file offset aligned to the
# device's logical block; 4 KiB suits every common device and file system.
_BLOCK = 4096
# Bytes staged in one aligned buffer per write: bounds memory per worker thread.
_DIRECT_CHUNK = 4 << 20
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_aligned = threading.local()


def _aligned_buffer() -> memoryview:
    """This thread's page-aligned staging buffer (anonymous mmap)."""
    view: memoryview | None = getattr(_aligned, "view", None)
    if view is None:
        view = _aligned.view = memoryview(mmap.mmap(-1, _DIRECT_CHUNK))
    return view


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _write_direct(fd: int, chunks: list[bytes]) -> None:
    """Write ``chunks`` through the aligned buffer; the tail block is padded, then cut off."""
    buffer = _aligned_buffer()
    filled = total = 0
    for chunk in chunks:
        source = memoryview(chunk).cast("B")
        while source:
            n = min(len(source), _DIRECT_CHUNK - filled)
            buffer[filled : filled + n] = source[:n]
            filled += n
            source = source[n:]
            if filled == _DIRECT_CHUNK:
                _write_all(fd, buffer[:filled])
                total += filled
                filled = 0
    if filled:
        _write_all(fd, buffer[: -(-filled // _BLOCK) * _BLOCK])
        total += filled
        os.ftruncate(fd, total)  # made durable by the caller's fsync


def _write_durably(path: Path, chunks: list[bytes], direct: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (_O_DIRECT if direct else 0)
    fd = os.open(path, flags, 0o640)
    try:
        if direct:
            _write_direct(fd, chunks)
        else:
            for chunk in chunks:
                _write_all(fd, memoryview(chunk).cast("B"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def direct_io_works(directory: Path) -> bool:
    """Whether files in ``directory`` can be written with ``O_DIRECT`` (probed, not guessed).

    Some file systems refuse the flag at open, others the first aligned write;
    either means buffered writes.
    """
    if not _O_DIRECT:
        return False
    probe = directory / f".direct-{uuid.uuid4().hex}.probe"
    try:
        _write_durably(probe, [b"\0" * (_BLOCK + 1)], direct=True)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    finally:
        probe.unlink(missing_ok=True)
    return True


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


def outcome_rel_path(sop_uid: str, sha256: str) -> str:
    """Storage path of a received echo report, relative to the root: apart from the
    instances, so that nothing reading ``instances/`` ever takes it for a CT."""
    return f"{_OUTCOMES}/{_digest(sop_uid, 32)}-{sha256[:16]}.dcm"


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
    def __init__(self, root: Path, min_free_bytes: int = 0, direct_io: bool = True) -> None:
        self.root = root
        self._root = root.resolve()
        self.min_free_bytes = min_free_bytes
        self._tmp = root / _TMP
        # Renames and their database commits for the same final name are
        # serialised, so a failing commit never removes a file another
        # association has just recorded.
        self._locks = [threading.Lock() for _ in range(64)]
        self._known_dirs: set[Path] = set()
        # Decided by prepare(), which probes the file system; buffered until then.
        self._want_direct = direct_io
        self.direct_io = False
        self._workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="instance-io")

    def prepare(self) -> int:
        """Create the directories and sweep temp files a crash left; returns how many.

        Several processes may share the root (nodes and screen workers, on one
        host or on a shared volume): only files whose writer is gone are swept,
        those of a dead process on this host at once, another host's after
        :data:`FOREIGN_TMP_SECONDS`.
        """
        (self.root / _INSTANCES).mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        swept = 0
        for leftover in self._tmp.iterdir():
            if _orphaned(leftover):
                leftover.unlink(missing_ok=True)
                swept += 1
        self.direct_io = self._want_direct and direct_io_works(self._tmp)
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
        tmp = self._tmp / f"{_TMP_OWNER}~{os.getpid()}~{uuid.uuid4().hex}.part"
        digest = self._workers.submit(_sha256, hashed)
        written = self._workers.submit(_write_durably, tmp, chunks, self.direct_io)
        return StagedFile(tmp, size, digest, written)

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
