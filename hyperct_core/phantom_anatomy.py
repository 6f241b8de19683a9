"""The anatomy and findings of a synthetic chest CT phantom, drawn as a HU volume.

A phantom is drawn in DICOM patient coordinates (LPS, mm, origin at the centre of the
field of view) and sampled on an axis-aligned grid, so the array is already in the
canonical ``"LPS"`` orientation of :mod:`hyperct_core.volume`: shape ``(slices, rows,
columns)``, slices from inferior to superior, rows from anterior to posterior, columns
from the patient's right to the patient's left.

Anatomy (HU of unenhanced CT): air outside the body (-1000), subcutaneous fat (-100),
chest-wall muscle (50), ribs and sternum (cortical bone 700), vertebral bodies
(cancellous 300 with a 700 cortex), spinal canal (20), lungs (-850 with texture),
mediastinal fat (-90), heart (blood and myocardium 40) inside an epicardial fat layer,
aorta (ascending, arch, descending), pulmonary trunk, superior vena cava, liver (60)
under the right hemidiaphragm. Quantum noise is white Gaussian (default 15-25 HU).
``PhantomSpec.blood_pool_hu`` draws the same chest during an intravenous contrast
bolus instead: cardiac chambers and great vessels at that HU, myocardium 110 HU.

Findings are drawn where they belong (see :mod:`hyperct_core.phantom_spec` for what
each one is and when it is labelled positive).

Everything is a phantom: geometry is schematic and sizes are generous so that a small
model at low resolution can see them. It exists to test the pipeline end to end and to
train the project's demo model, never to stand in for clinical data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyperct_core.phantom_spec import DEFAULT_SHAPE, DEFAULT_SPACING, PhantomSpec

__all__ = ["make_volume"]

# HU of unenhanced CT, per tissue.
AIR = -1000.0
FAT = -95.0
MUSCLE = 50.0
BLOOD = 40.0
FLUID = 10.0
LUNG = -850.0
EMPHYSEMA = -985.0
SOLID = 30.0
BONE_CORTEX = 700.0
BONE_CANCELLOUS = 280.0
LIVER = 60.0
ENHANCED_MYOCARDIUM = 110.0  # myocardium during an intravenous contrast bolus
CHAMBER_WALL_MM = 9.0  # myocardium between the pericardial fat and the blood pool
METAL = 3000.0


@dataclass
class _Canvas:
    """A HU array with its LPS sample coordinates; shapes paint into sub-boxes."""

    hu: np.ndarray  # (z, y, x) float32
    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    labels: np.ndarray = field(init=False)  # tissue class per voxel, for lesions to respect

    def __post_init__(self) -> None:
        self.labels = np.zeros(self.hu.shape, dtype=np.uint8)

    def box(
        self, lo: Sequence[float] | np.ndarray, hi: Sequence[float] | np.ndarray
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
        """Index box covering LPS ``[lo, hi]`` (x, y, z) and its broadcast coordinates."""
        idx = []
        for axis, coords in ((2, self.z), (1, self.y), (0, self.x)):
            a = int(np.searchsorted(coords, lo[axis], side="left"))
            b = int(np.searchsorted(coords, hi[axis], side="right"))
            if b <= a:
                return None
            idx.append(slice(a, b))
        zs, ys, xs = idx
        return (
            (zs, ys, xs),
            self.z[zs][:, None, None],
            self.y[ys][None, :, None],
            self.x[xs][None, None, :],
        )


# Tissue classes in ``_Canvas.labels``.
_OUTSIDE, _BODY, _LUNG_L, _LUNG_R, _HEART, _BONE, _VESSEL = range(7)


Point = Sequence[float] | np.ndarray


def _ellipsoid(
    canvas: _Canvas,
    centre: Point,
    radii: Point,
    value: float,
    *,
    tissue: int | None = None,
    only: Sequence[int] | None = None,
) -> None:
    """Paint an axis-aligned ellipsoid (x, y, z radii, mm), optionally only over ``only``."""
    lo = [c - r for c, r in zip(centre, radii, strict=True)]
    hi = [c + r for c, r in zip(centre, radii, strict=True)]
    found = canvas.box(lo, hi)
    if found is None:
        return
    index, z, y, x = found
    inside = (
        ((x - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((z - centre[2]) / radii[2]) ** 2
    ) <= 1.0
    if only is not None:
        inside &= np.isin(canvas.labels[index], only)
    canvas.hu[index][inside] = value
    if tissue is not None:
        canvas.labels[index][inside] = tissue


def _tube(
    canvas: _Canvas,
    points: np.ndarray,
    radius: float,
    value: float,
    *,
    tissue: int | None = None,
) -> None:
    """Paint a tube of ``radius`` along a polyline of (x, y, z) points (spheres along it)."""
    step = max(radius * 0.5, 0.5)
    for p, q in zip(points[:-1], points[1:], strict=True):
        n = max(int(np.ceil(np.linalg.norm(q - p) / step)), 1)
        for t in np.linspace(0.0, 1.0, n + 1):
            c = p + t * (q - p)
            _ellipsoid(canvas, c, (radius, radius, radius), value, tissue=tissue)


def _arc(centre: Sequence[float], radius: float, a0: float, a1: float, n: int = 24) -> np.ndarray:
    """Points of the aortic arch: a half circle in the y-z plane (x drifting left)."""
    t = np.linspace(a0, a1, n)
    x = centre[0] + np.linspace(0.0, 12.0, n)
    y = centre[1] - radius * np.cos(t)
    z = centre[2] + radius * np.sin(t)
    return np.stack([x, y, z], axis=1)


@dataclass(frozen=True)
class _Anatomy:
    """Patient-specific sizes and positions (mm), drawn from the spec's seed."""

    body: tuple[float, float]  # x, y semi-axes of the body outline
    fat: float  # subcutaneous fat thickness
    lung_radii: tuple[float, float]  # x, y semi-axes of each lung
    lung_x: float  # |x| of the lung centres
    lung_top: float  # z of the lung apices
    diaphragm: float  # z of the diaphragm domes
    heart: tuple[float, float, float]  # centre
    z_shift: float


def _anatomy(rng: np.random.Generator, z_extent: float) -> _Anatomy:
    s = float(rng.uniform(0.93, 1.07))
    body = (150.0 * s * rng.uniform(0.97, 1.03), 105.0 * s * rng.uniform(0.97, 1.03))
    half = z_extent / 2.0
    return _Anatomy(
        body=body,
        fat=float(rng.uniform(10, 22)),
        lung_radii=(0.31 * body[0], 0.74 * body[1]),
        lung_x=0.47 * body[0],
        lung_top=half * float(rng.uniform(0.78, 0.9)),
        diaphragm=-half * float(rng.uniform(0.55, 0.7)),
        heart=(
            float(18 + rng.uniform(-4, 4)),
            float(-0.22 * body[1] + rng.uniform(-4, 4)),
            float(-0.3 * half + rng.uniform(-6, 6)),
        ),
        z_shift=float(rng.uniform(-8, 8)),
    )


def make_volume(
    spec: PhantomSpec | None = None,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    rng: np.random.Generator | None = None,
    *,
    noise_hu: float | None = None,
) -> np.ndarray:
    """Render ``spec`` as a HU volume in canonical LPS order ``(slices, rows, columns)``.

    Args:
        spec: Findings; a normal chest if omitted.
        shape: ``(slices, rows, columns)``.
        spacing: Voxel size in mm along the same axes.
        rng: Randomness of the noise (and texture); ``spec.seed`` seeds one if omitted.
            The anatomy and lesion positions always come from ``spec.seed``, so one spec
            gives the same patient under any noise.
        noise_hu: Standard deviation of the white noise; drawn in [15, 25] if omitted.

    Returns:
        float32 array of HU values (integers, as a scanner stores them).
    """
    spec = spec or PhantomSpec()
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be 3 sizes >= 4, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive sizes (mm), got {tuple(spacing)}")
    nz, ny, nx = (int(v) for v in shape)
    dz, dy, dx = (float(v) for v in spacing)
    noise_rng = rng if rng is not None else np.random.default_rng([spec.seed, 1])
    layout = np.random.default_rng([spec.seed, 0])

    def axis(n: int, d: float) -> np.ndarray:
        return (np.arange(n) - (n - 1) / 2.0) * d

    canvas = _Canvas(
        np.full((nz, ny, nx), AIR, dtype=np.float32), axis(nz, dz), axis(ny, dy), axis(nx, dx)
    )
    anat = _anatomy(layout, nz * dz)
    _draw_body(canvas, anat)
    _draw_lungs(canvas, anat, layout)
    _draw_mediastinum(canvas, anat, spec, layout)
    _draw_lung_findings(canvas, anat, spec, layout)
    if spec.medical_material:
        _draw_pacemaker(canvas, anat)

    sigma = float(noise_rng.uniform(15, 25)) if noise_hu is None else float(noise_hu)
    hu = canvas.hu
    if sigma > 0:
        hu += noise_rng.normal(0.0, sigma, size=hu.shape).astype(np.float32)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return np.rint(hu)


def _draw_body(canvas: _Canvas, anat: _Anatomy) -> None:
    big = 1e4  # the body is a cylinder through every slice
    bx, by = anat.body
    _ellipsoid(canvas, (0, 0, 0), (bx, by, big), FAT, tissue=_BODY)
    _ellipsoid(canvas, (0, 0, 0), (bx - anat.fat, by - anat.fat, big), MUSCLE, tissue=_BODY)
    # Thoracic cavity (mediastinal fat where nothing else is drawn).
    wall = anat.fat + 14
    _ellipsoid(canvas, (0, 4, 0), (bx - wall, by - wall - 2, big), FAT, tissue=_BODY)
    # Ribs: thin bone arcs in the chest wall every ~25 mm of height.
    for zc in np.arange(canvas.z[0] + 10, canvas.z[-1], 25.0) + anat.z_shift:
        for r in (0.0,):
            _rib_ring(canvas, anat, zc + r)
    # Sternum and spine.
    _ellipsoid(canvas, (0, -(by - anat.fat - 8), 0), (14, 7, big), BONE_CORTEX, tissue=_BONE)
    _ellipsoid(canvas, (0, -(by - anat.fat - 8), 0), (11, 4, big), BONE_CANCELLOUS)
    spine_y = by - anat.fat - 40
    _ellipsoid(canvas, (0, spine_y, 0), (20, 17, big), BONE_CORTEX, tissue=_BONE)
    _ellipsoid(canvas, (0, spine_y, 0), (17, 14, big), BONE_CANCELLOUS)
    _ellipsoid(canvas, (0, spine_y + 27, 0), (9, 8, big), MUSCLE - 30)  # spinal canal
    _ellipsoid(canvas, (0, spine_y + 27, 0), (14, 13, big), BONE_CORTEX, only=[_BODY])


def _rib_ring(canvas: _Canvas, anat: _Anatomy, zc: float) -> None:
    found = canvas.box((-anat.body[0], -anat.body[1], zc - 5), (anat.body[0], anat.body[1], zc + 5))
    if found is None:
        return
    index, z, y, x = found
    bx, by = anat.body[0] - anat.fat - 7, anat.body[1] - anat.fat - 7
    r = np.sqrt((x / bx) ** 2 + (y / by) ** 2) + 0 * z
    ring = (np.abs(r - 1.0) < 6.0 / bx) & (np.abs(z - zc) <= 4.5) & (np.abs(x) > 25)
    canvas.hu[index][ring] = BONE_CORTEX
    canvas.labels[index][ring] = _BONE


def _lung_mask(canvas: _Canvas, anat: _Anatomy, side: int) -> tuple[Any, np.ndarray]:
    """Index box and boolean mask of one lung (side -1: right, +1: left)."""
    rx, ry = anat.lung_radii
    cx, cy = side * anat.lung_x, 6.0
    top, base = anat.lung_top + anat.z_shift, anat.diaphragm + anat.z_shift
    found = canvas.box((cx - rx, cy - ry, base - 40), (cx + rx, cy + ry, top))
    assert found is not None
    index, z, y, x = found
    # Apex: the cross-section shrinks toward the top; base: a dome, higher on the right.
    taper = np.clip((top - z) / (0.35 * (top - base)), 0.0, 1.0) ** 0.5
    r2 = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    dome = base + (12.0 if side < 0 else 0.0) + 30.0 * (1.0 - np.clip(r2, 0, 1))
    mask = (r2 <= taper**2) & (z >= dome)
    return index, mask


def _draw_lungs(canvas: _Canvas, anat: _Anatomy, layout: np.random.Generator) -> None:
    for side, tissue in ((-1, _LUNG_R), (1, _LUNG_L)):
        index, mask = _lung_mask(canvas, anat, side)
        # Vessels and interstitium give the parenchyma a smooth texture around -850 HU.
        texture = _smooth(layout.normal(0.0, 1.0, size=mask.shape)) * 40.0
        canvas.hu[index] = np.where(mask, LUNG + texture, canvas.hu[index])
        canvas.labels[index][mask] = tissue
    # Liver below the right hemidiaphragm.
    base = anat.diaphragm + anat.z_shift
    _ellipsoid(
        canvas,
        (-0.35 * anat.body[0], 10, base - 45),
        (0.55 * anat.body[0], 0.7 * anat.body[1], 70),
        LIVER,
        only=[_BODY],
    )


def _smooth(a: np.ndarray) -> np.ndarray:
    """Cheap separable 3-tap box blur, renormalised to unit variance."""
    for ax in range(a.ndim):
        a = (np.roll(a, 1, ax) + a + np.roll(a, -1, ax)) / 3.0
    return a / max(float(a.std()), 1e-6)


def _heart_geometry(anat: _Anatomy, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    hx, hy, hz = anat.heart
    radii = (48.0 * scale, 40.0 * scale, 42.0 * min(scale, 1.25))
    # A larger heart grows to the left and backward, as the ventricles dilate.
    centre = (hx + 8.0 * (scale - 1.0), hy + 6.0 * (scale - 1.0), hz + anat.z_shift)
    return centre, radii


def _draw_mediastinum(
    canvas: _Canvas, anat: _Anatomy, spec: PhantomSpec, layout: np.random.Generator
) -> None:
    centre, radii = _heart_geometry(anat, spec.heart_scale)
    # Heart | epicardial fat | pericardial fluid (if any) | pericardial fat.
    epicardial, pericardial = 3.0, 4.0
    rim = spec.pericardial_mm
    outer = [r + epicardial + rim + pericardial for r in radii]
    _ellipsoid(canvas, centre, outer, FAT, tissue=_HEART)
    if rim > 0:
        _ellipsoid(canvas, centre, [r + epicardial + rim for r in radii], FLUID, tissue=_HEART)
        _ellipsoid(canvas, centre, [r + epicardial for r in radii], FAT, tissue=_HEART)
    enhanced = spec.blood_pool_hu is not None
    blood = float(spec.blood_pool_hu) if spec.blood_pool_hu is not None else BLOOD
    _ellipsoid(canvas, centre, radii, ENHANCED_MYOCARDIUM if enhanced else BLOOD, tissue=_HEART)
    if enhanced:  # unenhanced, chambers and myocardium are alike: nothing to draw
        chambers = [r - CHAMBER_WALL_MM for r in radii]
        _ellipsoid(canvas, centre, chambers, blood, tissue=_HEART)

    top = centre[2] + radii[2] * 0.6
    arch_z = anat.lung_top + anat.z_shift - 45.0
    aorta_r = 14.0
    asc = np.array(
        [[centre[0] - 12, centre[1] + 10, top], [centre[0] - 14, centre[1] + 10, arch_z]]
    )
    arch_centre = (asc[1, 0], (asc[1, 1] + anat.body[1] * 0.42) / 2, arch_z)
    arch_radius = (anat.body[1] * 0.42 - asc[1, 1]) / 2
    arch = _arc(arch_centre, arch_radius, 0.0, np.pi)
    desc_top = arch[-1]
    desc = np.array([desc_top, [desc_top[0], desc_top[1], canvas.z[0] - 10]])
    aorta = np.concatenate([asc, arch, desc])
    _tube(canvas, aorta, aorta_r, blood, tissue=_VESSEL)
    # Pulmonary trunk (anterior-left) and superior vena cava (right).
    _tube(
        canvas,
        np.array(
            [[centre[0] + 10, centre[1] - 10, top], [centre[0] + 18, centre[1] + 5, arch_z - 25]]
        ),
        12.0,
        blood,
        tissue=_VESSEL,
    )
    _tube(
        canvas,
        np.array([[-22.0, centre[1] + 14, top], [-22.0, centre[1] + 14, canvas.z[-1] + 10]]),
        9.0,
        blood,
        tissue=_VESSEL,
    )

    # Calcified plaques sit on the aortic wall (arterial) and on the heart surface along
    # the left anterior descending and right coronary courses (coronary).
    # Calcified plaques are wall segments 15-40 mm long: on the aortic wall (arterial),
    # and along coronary courses over the upper, anterior heart surface (coronary).
    path = _resample(aorta, 5.0)
    for _ in range(spec.aortic_calcifications):
        i = int(layout.integers(len(path) - 8))
        seg = path[i : i + int(layout.integers(3, 8))]
        direction = layout.normal(size=3)
        direction /= np.linalg.norm(direction)
        r = float(layout.uniform(3.0, 4.5))
        _tube(canvas, seg + direction * (aorta_r - 1.0), r, float(layout.uniform(700, 1000)))
    for k in range(spec.coronary_calcifications):
        theta0 = layout.uniform(0.1, 0.7) * np.pi  # around the heart, anterior half
        phi = layout.uniform(0.1, 0.45) * np.pi  # above the equator
        lr = -1.0 if k % 2 else 1.0
        theta = theta0 + np.linspace(0.0, layout.uniform(0.12, 0.3) * np.pi, 6)
        u = np.stack(
            [
                lr * np.cos(theta) * np.cos(phi),
                -np.sin(theta) * np.cos(phi),
                np.full(6, np.sin(phi)),
            ],
            axis=1,
        )
        seg = np.array(centre) + u * (np.array(radii) + 2.0)
        _tube(canvas, seg, float(layout.uniform(3.0, 4.0)), float(layout.uniform(600, 950)))


def _resample(points: np.ndarray, step: float) -> np.ndarray:
    """The polyline ``points`` resampled every ``step`` mm."""
    lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    at = np.arange(0.0, along[-1], step)
    return np.stack([np.interp(at, along, points[:, a]) for a in range(3)], axis=1)


def _random_lung_point(
    canvas: _Canvas, anat: _Anatomy, layout: np.random.Generator, side: int, margin: float
) -> np.ndarray:
    """A point inside one lung at least ``margin`` mm inside its outline (rejection)."""
    rx, ry = anat.lung_radii
    top, base = anat.lung_top + anat.z_shift, anat.diaphragm + anat.z_shift
    tissue = _LUNG_L if side > 0 else _LUNG_R
    for _ in range(200):
        p = np.array(
            [
                side * anat.lung_x + layout.uniform(-rx, rx),
                6.0 + layout.uniform(-ry, ry),
                layout.uniform(base + 30, top - 20),
            ]
        )
        probe = [
            p + margin * np.asarray(d)
            for d in ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0))
        ]
        if all(_tissue_at(canvas, q) == tissue for q in probe):
            return p
    return np.array([side * anat.lung_x, 6.0, (top + base) / 2])


def _tissue_at(canvas: _Canvas, p: np.ndarray) -> int:
    k = [
        int(np.abs(c - v).argmin())
        for c, v in ((canvas.z, p[2]), (canvas.y, p[1]), (canvas.x, p[0]))
    ]
    if not (canvas.z[0] - 1 <= p[2] <= canvas.z[-1] + 1):
        return -1
    return int(canvas.labels[k[0], k[1], k[2]])


def _draw_lung_findings(
    canvas: _Canvas, anat: _Anatomy, spec: PhantomSpec, layout: np.random.Generator
) -> None:
    lungs = [_LUNG_L, _LUNG_R]
    if spec.emphysema_fraction > 0:
        # Holes of 4-10 mm radius, upper zones favoured (centrilobular pattern).
        for side, tissue in ((-1, _LUNG_R), (1, _LUNG_L)):
            index, mask = _lung_mask(canvas, anat, side)
            target = spec.emphysema_fraction * mask.sum()
            done = 0.0
            voxel = float(
                np.prod(
                    [
                        canvas.x[1] - canvas.x[0],
                        canvas.y[1] - canvas.y[0],
                        canvas.z[1] - canvas.z[0],
                    ]
                )
            )
            while done < target:
                p = _random_lung_point(canvas, anat, layout, side, 0.0)
                if layout.random() < 0.5:  # pull toward the apex
                    p[2] = max(p[2], layout.uniform(p[2], anat.lung_top + anat.z_shift - 10))
                r = float(layout.uniform(6, 14))
                _ellipsoid(canvas, p, (r, r, r), EMPHYSEMA, only=[tissue])
                done += 4.18879 * r**3 / voxel
    for k in range(spec.consolidations):
        side = 1 if k % 2 == 0 else -1
        c = _random_lung_point(canvas, anat, layout, side, 10.0)
        for _ in range(8):
            r = float(layout.uniform(20, 30))
            offset = layout.normal(0, 16, size=3)
            _ellipsoid(canvas, c + offset, (r, r, r * 1.2), SOLID, only=lungs)
    for k in range(spec.nodules):
        side = 1 if layout.random() < 0.5 else -1
        r = spec.nodule_mm / 2.0
        p = _random_lung_point(canvas, anat, layout, side, r + 6.0)
        _ellipsoid(canvas, p, (r, r, r), SOLID + layout.uniform(-10, 20), only=lungs)
        del k
    if spec.pleural_mm > 0:
        sides = {"left": (1,), "right": (-1,), "both": (1, -1)}[spec.pleural_side]
        for side in sides:
            index, mask = _lung_mask(canvas, anat, side)
            _, y = canvas.z[index[0]], canvas.y[index[1]]
            # Depth below the most posterior point of the lung at each height, so the
            # fluid forms a dependent layer with a meniscus along the lung outline.
            y3 = np.broadcast_to(y[None, :, None], mask.shape)
            back = np.where(mask, y3, -np.inf).max(axis=1, keepdims=True)
            fluid = mask & (y3 >= back - spec.pleural_mm)
            canvas.hu[index][fluid] = FLUID


def _draw_pacemaker(canvas: _Canvas, anat: _Anatomy) -> None:
    bx, by = anat.body
    z = anat.lung_top + anat.z_shift - 30.0
    gen = (0.55 * bx, -(by - anat.fat - 4), z)
    _ellipsoid(canvas, gen, (24, 6, 22), METAL)
    centre, radii = _heart_geometry(anat, 1.0)
    lead = np.array(
        [
            gen,
            [-22.0, centre[1] + 14, z],
            [-22.0, centre[1] + 14, centre[2] + radii[2] * 0.6],
            [centre[0] - 10, centre[1], centre[2] - 10],
        ]
    )
    _tube(canvas, lead, 1.6, METAL)
