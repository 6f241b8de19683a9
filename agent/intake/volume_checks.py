"""What a series' files say where its rows cannot: slices sent twice, multi-frame geometry.

Both read only the files they must, with the volume reader's own tests, so
the facts agree with what screening would make of the series.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hyperct_core.volume import DUPLICATE_MM


def settle_repeats(
    positioned: Sequence[tuple[float, Path | None]],
) -> tuple[tuple[float, ...], int]:
    """Sorted positions with each slice sent twice kept once, and how many were left out.

    Runs of positions closer than :data:`~hyperct_core.volume.DUPLICATE_MM`
    are one slice sent twice when :func:`~hyperct_core.volume.same_images`
    finds their files hold the same image, the test the volume reader applies
    when screening; otherwise (different images, or a file unknown or
    unreadable) all are kept, and completeness sees two instances at one
    position. Only files at shared positions are read.
    """
    items = sorted(positioned, key=lambda it: it[0])
    runs: list[list[tuple[float, Path | None]]] = []
    for item in items:
        if runs and item[0] - runs[-1][-1][0] < DUPLICATE_MM:
            runs[-1].append(item)
        else:
            runs.append([item])
    kept: list[float] = []
    repeated = 0
    for run in runs:
        if len(run) > 1 and _one_image([path for _, path in run]):
            kept.append(run[0][0])
            repeated += len(run) - 1
        else:
            kept.extend(position for position, _ in run)
    return tuple(kept), repeated


def frame_geometry(paths: Sequence[Path | None], frames: Sequence[int]) -> tuple[bool, str | None]:
    """Whether a multi-frame series' files were checked, and why screening would refuse them.

    Only series whose instances are all multi-frame are checked (the others
    are judged from the positions the node records), by
    :func:`~hyperct_core.volume.check_geometry`: the volume reader's own checks,
    with the pixel data left unread.
    """
    if not frames or any(n <= 1 for n in frames):
        return False, None
    known = [p for p in paths if p is not None]
    if len(known) < len(paths):
        return False, None
    from hyperct_core.errors import PreprocessError
    from hyperct_core.volume import check_geometry

    try:
        check_geometry(known)
    except PreprocessError as exc:
        return True, str(exc)
    except OSError as exc:
        return True, f"cannot read the files ({exc.strerror or type(exc).__name__})"
    return True, None


def _one_image(paths: Sequence[Path | None]) -> bool:
    from hyperct_core.errors import PreprocessError
    from hyperct_core.volume import same_images

    known = [p for p in paths if p is not None]
    if len(known) < len(paths):
        return False
    try:
        return same_images(known)
    except (PreprocessError, OSError):
        return False
