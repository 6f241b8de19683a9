"""Blood-pool attenuation of a chest CT: is the series enhanced by intravenous contrast?

Unenhanced blood measures about 30-60 HU (more with a high haematocrit, less in
anaemia); after an iodinated bolus the aorta and cardiac chambers measure far
above 120 HU (typically 150-450). :func:`measure_blood_pool` finds the blood
pool on the HU volume the screening path has already read and reports its
median attenuation. It needs nothing but the array and its voxel size.

Method (on the volume reoriented to LPS, subsampled to pixels of about 1.5 mm and
at most 120 slices, one axial slice at a time):

1. **Lungs.** Voxels below -400 HU that do not touch the edge of the slice
   (air outside the body does), with lung on both sides of the midline. A slice
   counts when its lungs cover at least ``MIN_LUNG_FRACTION`` of the largest
   lung area of the series: the thorax between the apices and the domes.
2. **Mediastinum.** In each row, the voxels between the right lung's medial
   edge and the left lung's medial edge that are not lung: the space between
   the lungs, without the chest wall.
3. **Candidate voxels.** After a 3 x 3 median filter (quantum noise), voxels
   from -20 to 600 HU: blood, myocardium, enhanced blood. Fat (below -20) and
   cortical bone and dense calcification (above 600) are left out, and so is
   whatever dense cortex (above 500 HU) encloses: the cancellous bone of a
   vertebral body measures like enhanced blood, its cortical ring does not.
   The mask is eroded by ``ERODE_MM`` so that partial-volume rims against fat
   and thin bridges between structures drop out.
4. **The heart's levels.** The slices whose candidate area is at least
   ``HEART_FRACTION`` of the largest: the heart is by far the largest soft
   tissue structure of the chest, so the spine, the oesophagus and lymph nodes
   never dominate there.
5. **Blood pool.** The largest 3-D connected component of the candidates on
   those slices: the heart with the aorta and pulmonary trunk beside it. Below
   ``MIN_REGION_ML`` nothing counts as found.
6. **Value.** The brightest half of that component is the blood pool (in an
   enhanced heart the chambers outshine the myocardium; unenhanced they are
   alike), and its median is reported: the 75th percentile of the component.
   Small calcifications, bone spicules and noise move neither quantile much;
   noise lifts an unenhanced value a little (about +30 HU at 100 HU of noise
   per voxel), far from the 120 HU that separates the two.

When no slice shows two lungs with a mediastinum between them (a small field
of view, a reconstruction of one lung, a series outside the chest), the
measurement returns ``None`` with the reason: the caller decides what an
unmeasured series means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hyperct_core.volume import CANONICAL_ORIENTATION, HUVolume

LUNG_HU = -400.0
CANDIDATE_MIN_HU = -20.0
CANDIDATE_MAX_HU = 600.0
MIN_LUNG_FRACTION = 0.5
HEART_FRACTION = 0.6
BONE_HU = 500.0
ERODE_MM = 3.0
MIN_REGION_ML = 15.0
MIN_LUNG_AREA_MM2 = 1500.0  # each lung, in a counted slice
BLOOD_POOL_QUANTILE = 75.0
MAX_SLICES = 24  # mid-thoracic slices examined, evenly spread
MAX_LUNG_SLICES = 120  # slices searched for lungs, evenly spread
MAX_THORAX_SLICES = 48  # of those, slices searched for the heart, evenly spread
WORK_MM = 1.5  # in-plane pixels are subsampled to about this size


@dataclass(frozen=True)
class BloodPool:
    """The outcome of :func:`measure_blood_pool`.

    Attributes:
        hu: Median HU of the blood pool; ``None`` when it was not found.
        volume_ml: Size of the region it was taken from (mL); 0 when not found.
        slices: Axial slices examined.
        reason: Why it was not found (empty when it was).
    """

    hu: float | None
    volume_ml: float = 0.0
    slices: int = 0
    reason: str = ""

    @property
    def measured(self) -> bool:
        return self.hu is not None


def measure_blood_pool(volume: HUVolume) -> BloodPool:
    """Median HU of the blood pool (heart chambers and great vessels) of a chest CT."""
    vol = volume.reoriented(CANONICAL_ORIENTATION)
    dz, dy, dx = vol.spacing
    # Pixels of about WORK_MM and at most MAX_LUNG_SLICES slices are plenty for organs
    # this size, and keep the check to a fraction of a second on a 512 x 512 x 600 series.
    sy = max(1, int(WORK_MM / dy))
    sx = max(1, int(WORK_MM / dx))
    sz = max(1, -(-vol.array.shape[0] // MAX_LUNG_SLICES))
    hu = vol.array[::sz, ::sy, ::sx]
    dz, dy, dx = dz * sz, dy * sy, dx * sx
    pixel_mm2 = dy * dx
    n = hu.shape[0]

    lungs: list[np.ndarray | None] = []
    areas = np.zeros(n)
    for k in range(n):
        mask = _lungs(hu[k], pixel_mm2)
        lungs.append(mask)
        areas[k] = 0.0 if mask is None else float(mask.sum()) * pixel_mm2
    if areas.max() <= 0:
        return BloodPool(None, reason="no slice shows two lungs (field of view too small?)")
    counted = [int(k) for k in np.flatnonzero(areas >= MIN_LUNG_FRACTION * areas.max())]
    if len(counted) > MAX_THORAX_SLICES:
        counted = [
            counted[i] for i in np.linspace(0, len(counted) - 1, MAX_THORAX_SLICES).astype(int)
        ]
    erode = (max(1, round(ERODE_MM / dy)), max(1, round(ERODE_MM / dx)))
    structure = np.ones((2 * erode[0] + 1, 2 * erode[1] + 1), dtype=bool)
    smooth: dict[int, np.ndarray] = {}
    masks: dict[int, np.ndarray] = {}
    for k in counted:
        mask = lungs[k]
        assert mask is not None
        smooth[k] = ndimage.median_filter(hu[k], size=3)
        masks[k] = ndimage.binary_erosion(
            _candidates(smooth[k], mask, pixel_mm2), structure=structure
        )
    # The heart's levels: where the soft tissue between the lungs is largest.
    tissue = np.array([float(masks[k].sum()) for k in counted])
    if tissue.max() <= 0:
        return BloodPool(None, slices=len(counted), reason="no soft tissue between the lungs")
    middle = [k for k, a in zip(counted, tissue, strict=True) if a >= HEART_FRACTION * tissue.max()]
    if len(middle) > MAX_SLICES:
        # Evenly spread; the kept slices are farther apart, still stacked in order.
        middle = [middle[i] for i in np.linspace(0, len(middle) - 1, MAX_SLICES).astype(int)]
    stack_hu = np.stack([smooth[k] for k in middle])
    stack = np.stack([masks[k] for k in middle])
    labels, count = ndimage.label(stack)
    if count == 0:
        return BloodPool(None, slices=len(middle), reason="no soft tissue between the lungs")
    sizes = np.bincount(labels.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    # Spread over the examined slices as over the range they stand for.
    span = (middle[-1] - middle[0] + 1) * dz if len(middle) > 1 else dz
    slab_mm = span / len(middle)
    volume_ml = float(sizes[biggest - 1] * pixel_mm2 * slab_mm / 1000.0)
    if volume_ml < MIN_REGION_ML:
        return BloodPool(
            None,
            volume_ml=round(volume_ml, 1),
            slices=len(middle),
            reason=f"largest region between the lungs is {volume_ml:.0f} mL, too small",
        )
    value = float(np.percentile(stack_hu[labels == biggest], BLOOD_POOL_QUANTILE))
    return BloodPool(round(value, 1), volume_ml=round(volume_ml, 1), slices=len(middle))


def _lungs(slice_hu: np.ndarray, pixel_mm2: float) -> np.ndarray | None:
    """Lung mask of one axial slice, or None unless both lungs are there."""
    air = slice_hu < LUNG_HU
    labels, count = ndimage.label(air)
    if count == 0:
        return None
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * pixel_mm2
    sizes[edge] = 0.0
    sizes[0] = 0.0
    keep = sizes >= MIN_LUNG_AREA_MM2 / 4
    if not keep.any():
        return None
    mask = keep[labels]
    # Both sides of the body: lung left and right of the mask's own centre line.
    columns = np.flatnonzero(mask.any(axis=0))
    middle = (columns.min() + columns.max()) / 2.0
    right = mask[:, : int(middle)].sum() * pixel_mm2
    left = mask[:, int(middle) + 1 :].sum() * pixel_mm2
    if min(right, left) < MIN_LUNG_AREA_MM2:
        return None
    return mask


def _candidates(smooth: np.ndarray, lungs: np.ndarray, pixel_mm2: float) -> np.ndarray:
    """Blood and soft tissue between the lungs, bone left out.

    Bone is what dense cortex (above ``BONE_HU``) encloses: the cancellous bone of
    a vertebral body measures like enhanced blood, its cortical ring does not.
    """
    bone = ndimage.binary_fill_holes(smooth > BONE_HU)
    bone = ndimage.binary_dilation(bone, iterations=1)
    return (
        _between_lungs(lungs) & (smooth >= CANDIDATE_MIN_HU) & (smooth <= CANDIDATE_MAX_HU) & ~bone
    )


def _between_lungs(lungs: np.ndarray) -> np.ndarray:
    """Per row, the columns strictly between the right lung and the left lung."""
    columns = np.flatnonzero(lungs.any(axis=0))
    middle = int((columns.min() + columns.max()) / 2)
    width = lungs.shape[1]
    index = np.arange(width)
    right = lungs[:, : middle + 1]
    left = lungs[:, middle + 1 :]
    has_right = right.any(axis=1)
    has_left = left.any(axis=1)
    # Medial edge of the right lung: its largest column; of the left lung: its smallest.
    right_edge = np.where(has_right, middle - np.argmax(right[:, ::-1], axis=1), width)
    left_edge = np.where(has_left, middle + 1 + np.argmax(left, axis=1), -1)
    inside = (index[None, :] > right_edge[:, None]) & (index[None, :] < left_edge[:, None])
    return inside & ~lungs
