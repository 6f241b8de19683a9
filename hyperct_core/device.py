"""Which torch device a command runs on: one rule for train, evaluate and serve.

``auto`` is the first CUDA device where torch has CUDA and a GPU is visible, else the
CPU. ``cpu``, ``cuda`` and ``cuda:N`` are taken as asked, but only if they exist here:
a device that is not there is one :class:`DeviceError` line, never a fall-back.
"""

from __future__ import annotations

import re

import torch

from hyperct_core.errors import HyperCTError

__all__ = ["DEVICE_CHOICES", "DeviceError", "cpu_has_native_bf16", "resolve_device"]

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


class DeviceError(HyperCTError, ValueError):
    """A device that does not exist on this machine or is not supported."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``)."""
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(text)
    if match is None:
        raise DeviceError(f"unknown device {device!s:.40}: use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        reason = (
            "this torch build has no CUDA"
            if torch.version.cuda is None
            else "no GPU is visible (driver, CUDA_VISIBLE_DEVICES)"
        )
        raise DeviceError(f"device {text} asked for, but {reason}; use --device cpu or auto")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"device {text} asked for, but this machine has {count} GPU(s): cuda:0"
            + (f" to cuda:{count - 1}" if count > 1 else "")
        )
    return torch.device("cuda", index)


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX).

    Without it torch emulates bf16 matrix products, far slower than fp32, so the
    benchmarks and ``dtype="auto"`` keep fp32 there.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    if flags:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
