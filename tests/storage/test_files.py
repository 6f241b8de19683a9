"""Durable instance files: direct and buffered writes keep the same bytes; failures leave none."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import storage.files as files
from storage.files import InstanceStore, direct_io_works

# Around the 4 KiB alignment and the 4 MiB staging buffer, and a real CT image.
SIZES = [1, 4095, 4096, 4097, 525_541, files._DIRECT_CHUNK, 2 * files._DIRECT_CHUNK + 123]


def _payload(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def _ready_store(root: Path, direct_io: bool = True) -> InstanceStore:
    store = InstanceStore(root, direct_io=direct_io)
    store.prepare()
    return store


@pytest.fixture
def direct_capable(tmp_path: Path) -> None:
    if not direct_io_works(tmp_path):
        pytest.skip("the test file system refuses O_DIRECT")


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("size", SIZES)
def test_published_file_holds_exactly_the_bytes(tmp_path: Path, direct: bool, size: int) -> None:
    store = _ready_store(tmp_path / "root", direct_io=direct)
    try:
        data = _payload(size)
        # Two chunks (the Part 10 prefix and the dataset) that split an aligned block.
        staged = store.stage([data[:132], data[132:]], data)
        path = store.publish(staged, "instances/a/b/c.dcm")
        assert path.read_bytes() == data
        assert os.stat(path).st_size == size
        assert list((tmp_path / "root" / ".tmp").iterdir()) == []
    finally:
        store.close()


def test_prepare_chooses_direct_io_where_the_file_system_allows(
    tmp_path: Path, direct_capable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int] = []
    real_open = os.open

    def spy(path: object, flags: int, *args: object) -> int:
        if str(path).endswith(".part"):
            opened.append(flags)
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "open", spy)
    store = _ready_store(tmp_path)
    try:
        assert store.direct_io is True
        store.publish(store.stage([b"x" * 5000], b"x" * 5000), "instances/x.dcm")
        assert len(opened) == 1 and opened[0] & os.O_DIRECT
    finally:
        store.close()
    off = _ready_store(tmp_path / "off", direct_io=False)
    off.close()
    assert off.direct_io is False


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_a_file_system_that_refuses_direct_io_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_at: str
) -> None:
    real_open, real_write = os.open, os.write
    direct_fds: set[int] = set()

    def fake_open(path: object, flags: int, *args: object) -> int:
        if flags & files._O_DIRECT and refused_at == "open":
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags, *args)  # type: ignore[arg-type]
        if flags & files._O_DIRECT:
            direct_fds.add(fd)
        return fd

    def fake_write(fd: int, data: object) -> int:
        if fd in direct_fds:
            direct_fds.discard(fd)  # the descriptor number is reused after close
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "open", fake_open)
    monkeypatch.setattr(files.os, "write", fake_write)
    store = _ready_store(tmp_path / "root")
    try:
        assert store.direct_io is False
        data = _payload(10_000)
        path = store.publish(store.stage([data], data), "instances/y.dcm")
        assert path.read_bytes() == data
        # The probe file is gone too.
        assert list((tmp_path / "root" / ".tmp").iterdir()) == []
    finally:
        store.close()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_a_failed_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    store = _ready_store(tmp_path / "root", direct_io=direct)
    real_write = os.write
    calls = 0

    def full_disk(fd: int, data: object) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:  # the first block lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, memoryview(data)[:4096])  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "write", full_disk)
    try:
        data = _payload(100_000)
        staged = store.stage([data], data)
        with pytest.raises(OSError) as raised:
            store.publish(staged, "instances/z.dcm")
        assert raised.value.errno == errno.ENOSPC
        assert not (tmp_path / "root" / "instances" / "z.dcm").exists()
        assert list((tmp_path / "root" / ".tmp").iterdir()) == []
    finally:
        store.close()
