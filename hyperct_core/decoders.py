"""Which transfer syntaxes this installation decodes, and one decoder pydicom lacks.

pydicom decodes compressed *Pixel Data* through plugins (GDCM, Pillow,
pyjpegls, its own RLE decoder). For JPEG Extended (Process 2 & 4, PS3.5
A.4.1) with 12-bit samples, the usual lossy syntax of CT, its only plugin is
pylibjpeg-libjpeg, which is GPL-licensed; its GDCM and Pillow plugins refuse
12-bit samples. GDCM itself decodes them (its bundled 12-bit IJG codec), so
:data:`PLUGIN` adds a pydicom decoding plugin that calls GDCM for greyscale
JPEG Extended. :func:`register` runs when :mod:`hyperct_core.volume` is imported, so
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
# pydicom's own JPEG Extended plugins, re-added behind PLUGIN (see register()).
_PYDICOM_PLUGINS = {
    name: (f"pydicom.pixels.decoders.{name}", "_decode_frame")
    for name in ("gdcm", "pylibjpeg", "pillow")
}
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
    """One greyscale JPEG Extended frame (8 or 12-bit samples), decoded by GDCM.

    The pixel format given to GDCM says the sample precision is also the
    *allocated* size: GDCM picks its JPEG codec by the allocated size, and with
    16 it first tries its 16-bit codec, which fails and writes a diagnostic to
    the process's standard error before GDCM falls back to the 12-bit one.
    12-bit samples come back in 16-bit containers either way.
    """
    if runner.samples_per_pixel != 1 or not 0 < runner.bits_stored <= 12:
        # Colour JPEG is Pillow's and GDCM's pydicom plugins' job; CT is greyscale.
        raise NotImplementedError(f"{PLUGIN} decodes greyscale samples of up to 12 bits")
    if runner.pixel_representation != 0:
        # Lossy encoders (DCMTK, GDCM) rescale CT to unsigned samples before
        # compressing; signed JPEG samples are not something to guess about.
        raise NotImplementedError(f"{PLUGIN} does not decode signed JPEG samples")
    precision = 8 if runner.bits_stored <= 8 else 12

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
    image.SetPixelFormat(gdcm.PixelFormat(1, precision, precision, precision - 1, 0))
    container = 8 if precision == 8 else 16
    runner.set_option("bits_allocated", container)
    # GDCM returns the buffer as a str; surrogateescape gives back the bytes.
    frame = image.GetBuffer().encode("utf-8", "surrogateescape")
    expected = runner.rows * runner.columns * container // 8
    if len(frame) != expected:
        raise ValueError(f"GDCM returned {len(frame)} bytes for a frame of {expected}")
    return cast(bytes, frame)


def register() -> None:
    """Make :data:`PLUGIN` pydicom's first JPEG Extended decoder (idempotent).

    First, because pydicom tries its plugins in order and logs every refusal
    as an error with a traceback: GDCM's and Pillow's plugins would refuse
    every 12-bit frame before this one decoded it. They stay as fallbacks.
    """
    decoder = get_decoder(JPEGExtended12Bit)
    with _REGISTER_LOCK:  # pydicom's add_plugin is not thread-safe
        if PLUGIN in decoder.available_plugins or not is_available(JPEGExtended12Bit):
            return
        moved = [label for label in decoder.available_plugins if label in _PYDICOM_PLUGINS]
        for label in moved:
            decoder.remove_plugin(label)
        decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))
        for label in moved:
            decoder.add_plugin(label, _PYDICOM_PLUGINS[label])


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
