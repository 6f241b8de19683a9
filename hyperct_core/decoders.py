"""Which transfer syntaxes this installation decodes, and one decoder pydicom lacks.

pydicom decodes compressed *Pixel Data* through plugins (GDCM, Pillow,
pyjpegls, its own RLE decoder). For JPEG Extended (Process 2 & 4, PS3.5
A.4.1) with 12-bit samples, the usual lossy syntax of CT, its only plugin is
pylibjpeg-libjpeg, which is GPL-licensed; its GDCM and Pillow plugins refuse
12-bit samples. GDCM itself decodes them (its bundled 12-bit IJG codec), so
:data:`PLUGIN` adds a pydicom decoding plugin that calls GDCM for exactly that
case. :func:`register` runs when :mod:`hyperct_core.volume` is imported, so
every path that turns pixel data into a volume has it.

The plugin follows pydicom's decoder plugin interface: ``is_available``,
``DECODER_DEPENDENCIES`` and a frame decoding function.
"""

from __future__ import annotations

import threading
from typing import cast

from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
)

try:
    import gdcm

    HAVE_GDCM = True
except ImportError:  # python-gdcm is a dependency; a broken install just decodes less
    HAVE_GDCM = False

PLUGIN = "gdcm-jpeg12"
_REGISTER_LOCK = threading.Lock()
DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("gdcm>=3.0.10",)}

# Native encodings (PS3.5 A.1, A.2, A.5): pydicom reads them without a plugin.
NATIVE_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)


def is_available(uid: str) -> bool:
    """pydicom's plugin interface: can this plugin decode ``uid``?"""
    return HAVE_GDCM and uid in DECODER_DEPENDENCIES


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One 12-bit greyscale JPEG Extended frame as 16-bit little-endian samples.

    The pixel format given to GDCM says 12 bits *allocated*: GDCM picks its
    JPEG codec by the allocated size, and with 16 it first tries the 16-bit
    codec, which fails and writes a diagnostic to the process's standard error
    before GDCM falls back to the 12-bit one. The decoded buffer is 16-bit
    either way.
    """
    if runner.samples_per_pixel != 1 or not 8 < runner.bits_stored <= 12:
        # 8-bit samples are GDCM's and Pillow's plugins' job; colour CT does not exist.
        raise NotImplementedError(f"{PLUGIN} decodes 9 to 12-bit greyscale samples only")
    if runner.pixel_representation != 0:
        # Lossy encoders (DCMTK, GDCM) rescale CT to unsigned samples before
        # compressing; signed 12-bit JPEG is not something to guess about.
        raise NotImplementedError(f"{PLUGIN} does not decode signed 12-bit JPEG samples")

    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    pi_type = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi_type))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    image.SetPixelFormat(gdcm.PixelFormat(1, 12, 12, 11, 0))
    runner.set_option("bits_allocated", 16)
    # GDCM returns the buffer as a str; surrogateescape gives back the bytes.
    frame = image.GetBuffer().encode("utf-8", "surrogateescape")
    expected = runner.rows * runner.columns * 2
    if len(frame) != expected:
        raise ValueError(f"GDCM returned {len(frame)} bytes for a frame of {expected}")
    return cast(bytes, frame)


def register() -> None:
    """Add :data:`PLUGIN` to pydicom's JPEG Extended decoder (idempotent)."""
    decoder = get_decoder(JPEGExtended12Bit)
    with _REGISTER_LOCK:  # pydicom's add_plugin is not thread-safe
        if PLUGIN in decoder.available_plugins or not is_available(JPEGExtended12Bit):
            return
        decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))


def can_decode(transfer_syntax: str) -> bool:
    """Whether pixel data of CT (12 to 16-bit greyscale) in this syntax decodes here.

    A plugin that is available yet refuses CT's sample sizes does not count:
    JPEG Extended needs :data:`PLUGIN`, not only the 8-bit Pillow or GDCM path.
    """
    uid = UID(transfer_syntax)
    if uid in NATIVE_SYNTAXES:
        return True
    register()
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:  # no pydicom decoder at all for this syntax
        return False
    if uid == JPEGExtended12Bit:
        return PLUGIN in decoder.available_plugins
    return bool(decoder.is_available)
