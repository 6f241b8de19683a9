"""A Deflated Explicit VR Little Endian dataset (PS3.5 A.5), inflated only as far as it is read.

A deflate bomb (1000:1) would otherwise turn a capped dataset on the wire
into gigabytes in memory.
"""

from __future__ import annotations

import zlib

from agent.dicom.errors import BeyondLimits, UnreadableHeader


class InflatingReader:
    """A read-only file over a raw deflate stream (PS3.5 A.5), inflated as it is read.

    Bytes are produced in chunks as reads and forward seeks need them, and
    dropped once read, but for a short history that pydicom's rewinds need.
    More than ``cap`` bytes in all raises :class:`BeyondLimits`.
    """

    _IN_CHUNK = 256 << 10
    _OUT_CHUNK = 1 << 20
    _HISTORY = 64 << 10

    def __init__(self, data: bytes, cap: int) -> None:
        self._data = memoryview(data)
        self._fed = 0
        self._inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
        self._cap = cap
        self._buffer = bytearray()  # inflated bytes from stream offset self._base on
        self._base = 0
        self._pos = 0
        self._ended = False

    def _produced(self) -> int:
        return self._base + len(self._buffer)

    def _fill(self, upto: int) -> None:
        """Inflate until stream offset ``upto`` is produced or the stream ends."""
        while self._produced() < upto and not self._ended:
            keep_from = max(self._pos - self._HISTORY, self._base)
            if keep_from > self._base:  # drop what no read can come back to
                del self._buffer[: keep_from - self._base]
                self._base = keep_from
            source: bytes | memoryview = self._inflater.unconsumed_tail
            if not source:
                if self._fed >= len(self._data):
                    self._ended = True  # the stream is truncated: the data ends here
                    break
                source = self._data[self._fed : self._fed + self._IN_CHUNK]
                self._fed += len(source)
            out = self._inflater.decompress(source, self._OUT_CHUNK)
            self._buffer += out
            if self._produced() > self._cap:
                raise BeyondLimits("the dataset inflates beyond the maximum dataset size")
            if self._inflater.eof:
                self._ended = True

    def reaches(self, offset: int) -> bool:
        """Whether the inflated data is at least ``offset`` bytes long."""
        self._fill(offset)
        return self._produced() >= offset

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            self._fill(self._cap + 1)
            size = self._produced() - self._pos
        self._fill(self._pos + size)
        if self._pos < self._base:
            raise UnreadableHeader("the dataset cannot be decoded (read too far back)")
        start = self._pos - self._base
        chunk = bytes(self._buffer[start : start + size])
        self._pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._pos
        elif whence == 2:
            self._fill(self._cap + 1)
            offset += self._produced()
        if offset < self._base:
            raise UnreadableHeader("the dataset cannot be decoded (seek too far back)")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos
