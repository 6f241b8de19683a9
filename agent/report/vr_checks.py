"""Checks of a decoded value against its VR (PS3.5 6.2) and Value Multiplicity (PS3.6).

Used by :mod:`agent.report.source` before a source value goes into a report.
A failed check raises :class:`InvalidValue` naming the rule broken, never the value
(the value may be patient data).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable

from pydicom.datadict import dictionary_VM
from pydicom.tag import BaseTag


class InvalidValue(Exception):
    """A value a report cannot carry; the message names why, never the value."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # LT/ST/UT keep TAB LF FF CR


def _max_chars(vr: str, limit: int) -> Callable[[str], None]:
    def check(text: str) -> None:
        if len(text) > limit:
            raise InvalidValue(f"longer than {vr} allows ({limit})")
        if _CONTROL.search(text):
            raise InvalidValue("control character")

    return check


def _free_text(vr: str, limit: int | None) -> Callable[[str], None]:
    def check(text: str) -> None:
        if limit is not None and len(text) > limit:
            raise InvalidValue(f"longer than {vr} allows ({limit})")
        if _TEXT_CONTROL.search(text):
            raise InvalidValue("control character")

    return check


def _pattern(vr: str, regex: str, limit: int, extra: Callable[[str], bool] | None = None):
    compiled = re.compile(regex)

    def check(text: str) -> None:
        if len(text) > limit or not compiled.fullmatch(text) or (extra and not extra(text)):
            raise InvalidValue(f"not a valid {vr}")

    return check


def _check_pn(text: str) -> None:
    """PS3.5 6.2.1: at most three component groups of at most five components, 64 each."""
    if _CONTROL.search(text):
        raise InvalidValue("control character")
    groups = text.split("=")
    if len(groups) > 3:
        raise InvalidValue("more than three PN component groups")
    for group in groups:
        if group.count("^") > 4:
            raise InvalidValue("more than five PN components")
        if len(group) > 64:
            raise InvalidValue("PN component group longer than 64")


def _is_date(text: str) -> bool:
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return False
    return True


def _is_time(text: str) -> bool:
    hh, mm, ss = text[:2], text[2:4] or "00", text[4:6] or "00"
    return int(hh) < 24 and int(mm) < 60 and int(ss) < 61


def _is_datetime(text: str) -> bool:
    core = re.split(r"[+-]", text, maxsplit=1)
    stamp = core[0]
    date = stamp[:8]
    month_day_ok = len(date) < 8 or _is_date(date)
    month_ok = len(date) < 6 or 1 <= int(date[4:6]) <= 12
    offset_ok = len(core) == 1 or (int(core[1][:2]) <= 14 and int(core[1][2:]) < 60)
    return month_day_ok and month_ok and offset_ok and (len(stamp) <= 8 or _is_time(stamp[8:]))


def _is_int32(text: str) -> bool:
    return -(2**31) <= int(text) <= 2**31 - 1


VALUE_CHECKS: dict[str, Callable[[str], None]] = {
    "AE": _max_chars("AE", 16),
    "CS": _pattern("CS", r"[A-Z0-9 _]*", 16),
    "SH": _max_chars("SH", 16),
    "LO": _max_chars("LO", 64),
    "UC": _max_chars("UC", 2**32 - 2),
    "PN": _check_pn,
    "ST": _free_text("ST", 1024),
    "LT": _free_text("LT", 10240),
    "UT": _free_text("UT", None),
    "AS": _pattern("AS", r"\d{3}[DWMY]", 4),
    "DA": _pattern("DA", r"\d{8}", 8, _is_date),
    "TM": _pattern("TM", r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", 14, _is_time),
    "DT": _pattern(
        "DT",
        r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?",
        26,
        _is_datetime,
    ),
    "DS": _pattern("DS", r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", 16),
    "IS": _pattern("IS", r"[+-]?\d+", 12, _is_int32),
    "UI": _pattern("UI", r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*", 64),
    "UR": _free_text("UR", None),
}


def check_vm(tag: BaseTag, count: int) -> None:
    """PS3.6 Value Multiplicity: "1", "1-3", "1-n", "2-2n" ..."""
    try:
        vm = dictionary_VM(tag)
    except KeyError:
        return
    if count == 0:
        return
    low_text, _, high_text = vm.partition("-")
    low = int(low_text)
    if not high_text:
        ok = count == low
    elif high_text.endswith("n"):
        step = int(high_text[:-1] or 1)
        ok = count >= low and count % step == 0
    else:
        ok = low <= count <= int(high_text)
    if not ok:
        raise InvalidValue(f"{count} values where VM is {vm}")
