"""Anatomy-like pixel generators per class: CT (lung, abdomen with liver lesions), MR (knee, brain)
and US (thyroid, gallbladder, kidney), each returning stored values plus the header they need."""

from __future__ import annotations

import math

import numpy as np

from radimagenet.ops.synth.shapes import Pixels, _disk, _ell, _grid, _noise, _pick

# ------------------------------------------------------------------------------------------- CT


def _ct_body(rng, h, w):
    """Air, table, body outline with subcutaneous fat; returns (hu, u, v, body)."""
    u, v = _grid(rng, h, w)
    hu = np.full((h, w), -1000.0, dtype=np.float32)
    rx, ry = rng.uniform(0.78, 0.9), rng.uniform(0.55, 0.66)
    body = _ell(u, v, 0, 0, rx, ry)
    hu[body] = -100.0
    hu[_ell(u, v, 0, 0, rx - 0.05, ry - 0.05)] = 45.0
    hu[(v > ry + 0.04) & (v < ry + 0.08) & (np.abs(u) < 0.95)] = 200.0  # table
    spine = _ell(u, v, 0, ry - 0.2, 0.1, 0.09)
    hu[spine] = 900.0
    hu[_ell(u, v, 0, ry - 0.2, 0.075, 0.065)] = 250.0
    return hu, u, v, body


def _ct_finish(rng, hu: np.ndarray, window: tuple[float, float] | None, part: str, mask=None) -> Pixels:
    """Noise, HU -> stored int16 with intercept -1024; some files carry no window tags."""
    h, w = hu.shape
    hu += rng.normal(0.0, rng.uniform(8.0, 20.0), hu.shape).astype(np.float32)
    stored = np.clip(np.rint(hu + 1024.0), -1024, 4095).astype(np.int16)
    has_window = rng.random() < 0.7
    spacing = float(rng.uniform(0.6, 0.9)) * 512 / max(h, w)
    return Pixels(
        array=stored,
        modality="CT",
        body_part=part,
        photometric="MONOCHROME2",
        bits_stored=16,
        signed=True,
        spacing=spacing,
        rescale=(1.0, -1024.0),
        window=window if has_window else None,
        mask=mask,
    )


def _ct_size(rng) -> int:
    """Most CT slices are 512 x 512, some 256."""
    return 512 if rng.random() < 0.75 else 256


def _ct_lung(rng, finding: str) -> Pixels:
    """Chest CT: lungs, heart, vessels; nodules or peripheral reticulation per ``finding``."""
    n = _ct_size(rng)
    hu, u, v, _ = _ct_body(rng, n, n)
    lungs = np.zeros((n, n), bool)
    for side in (-1, 1):
        lungs |= _ell(
            u, v, side * rng.uniform(0.3, 0.4), -0.03, rng.uniform(0.24, 0.32), rng.uniform(0.34, 0.44)
        )
    lungs &= ~_ell(u, v, rng.uniform(0.0, 0.1), 0.05, rng.uniform(0.16, 0.22), rng.uniform(0.18, 0.25))
    hu[lungs] = -860.0 + 25.0 * _noise(rng, n, n, 6)[lungs]
    vessels = lungs & (_noise(rng, n, n, 45) > rng.uniform(1.6, 1.9))
    hu[vessels] = 30.0
    if finding == "nodule":
        for _ in range(int(rng.integers(1, 4))):
            at = _pick(rng, lungs)
            if at:
                hu[_disk(n, n, at[0], at[1], n * rng.uniform(0.008, 0.022)) & lungs] = rng.uniform(0, 60)
    elif finding == "ild":
        inner = np.zeros((n, n), bool)
        for side in (-1, 1):
            inner |= _ell(u, v, side * 0.35, -0.03, 0.16, 0.24)
        periphery = lungs & ~inner
        reticular = periphery & (
            np.abs(_noise(rng, n, n, int(rng.integers(35, 55)))) < rng.uniform(0.12, 0.2)
        )
        hu[periphery] += 120.0 * np.clip(_noise(rng, n, n, 5)[periphery] + 0.5, 0, None)  # ground glass
        hu[reticular] = rng.uniform(-450, -250)
    return _ct_finish(rng, hu, (-600.0, 1500.0), "CHEST")


def _ct_abd(rng, lesion: bool | None = None) -> Pixels:
    """Abdominal CT: liver, spleen, kidneys, aorta, bowel gas; optional liver lesion + mask."""
    n = _ct_size(rng)
    hu, u, v, body = _ct_body(rng, n, n)
    liver = _ell(u, v, rng.uniform(-0.4, -0.25), -0.12, rng.uniform(0.32, 0.42), rng.uniform(0.28, 0.38), 0.3)
    liver &= body
    hu[liver] = 60.0 + 6.0 * _noise(rng, n, n, 8)[liver]
    hu[_ell(u, v, 0.5, -0.1, 0.13, 0.2, -0.4)] = 50.0
    for side in (-1, 1):
        kidney = _ell(u, v, side * 0.3, 0.22, 0.09, 0.13, side * 0.3)
        hu[kidney] = 160.0
        hu[_ell(u, v, side * 0.3, 0.22, 0.04, 0.06, side * 0.3)] = 20.0
    hu[_ell(u, v, 0.06, 0.22, 0.045, 0.045)] = 170.0
    free = body & ~liver & (hu < 100) & (hu > 0)
    for _ in range(int(rng.integers(3, 9))):
        at = _pick(rng, free)
        if at:
            hu[_disk(n, n, at[0], at[1], n * rng.uniform(0.008, 0.025)) & free] = -900.0
    mask = None
    if lesion is not None:
        mask = np.zeros((n, n), np.uint8)
        if lesion:
            mask = _liver_lesion(rng, hu, u, v, liver)
    return _ct_finish(rng, hu, (40.0, 400.0), "ABDOMEN", mask)


def _liver_lesion(rng, hu, u, v, liver) -> np.ndarray:
    """A textured hypodense ellipse inside the liver (about 1-3% of the image, 45-80 HU darker than
    the liver: visible at 64 px, but not trivially); returns its exact mask."""
    inner = liver & _ell(u, v, *_centroid(u, v, liver), 0.25, 0.22)
    at = _pick(rng, inner if inner.any() else liver)
    if at is None:
        return np.zeros(hu.shape, np.uint8)
    cu, cv = float(u[at]), float(v[at])
    rx, ry = rng.uniform(0.09, 0.17, 2)
    region = _ell(u, v, cu, cv, rx, ry, float(rng.uniform(0, math.pi))) & liver
    n = hu.shape[0]
    texture = 6.0 * _noise(rng, n, n, 30)[region]
    hu[region] += -float(rng.uniform(45.0, 80.0)) + texture
    return region.astype(np.uint8)


def _centroid(u, v, mask) -> tuple[float, float]:
    """Mean canonical coordinate of a mask."""
    return float(u[mask].mean()), float(v[mask].mean())


# ------------------------------------------------------------------------------------------- MR


def _mr_finish(rng, signal: np.ndarray, part: str) -> Pixels:
    """Bias field, Rician noise, 12-bit unsigned; some MONOCHROME1 (stored inverted), few windows."""
    h, w = signal.shape
    signal *= 1.0 + 0.15 * _noise(rng, h, w, 3)
    sigma = float(rng.uniform(15.0, 40.0))
    real = signal + rng.normal(0, sigma, signal.shape).astype(np.float32)
    imag = rng.normal(0, sigma, signal.shape).astype(np.float32)
    stored = np.clip(np.rint(np.sqrt(real * real + imag * imag)), 0, 4095).astype(np.uint16)
    photometric, center = "MONOCHROME2", 1000.0
    if rng.random() < 0.08:  # stored inverted; the display (after inversion) looks the same
        stored = (4095 - stored).astype(np.uint16)
        photometric, center = "MONOCHROME1", 4095.0 - center
    window = (center, 2200.0) if rng.random() < 0.3 else None
    return Pixels(stored, "MR", part, photometric, 12, False, float(rng.uniform(0.4, 0.9)), None, window)


def _mr_size(rng) -> int:
    """MR matrices vary."""
    return 256 if rng.random() < 0.6 else 320


def _mr_knee(rng, tear: bool) -> Pixels:
    """Sagittal knee: femur/tibia marrow, cartilage, dark meniscal wedges; tear = bright line."""
    n = _mr_size(rng)
    u, v = _grid(rng, n, n)
    s = np.zeros((n, n), np.float32)
    s[_ell(u, v, 0, 0, 0.62, 1.3)] = 1700.0
    s[_ell(u, v, 0, 0, 0.55, 1.25)] = 750.0 + 60 * _noise(rng, n, n, 10)[_ell(u, v, 0, 0, 0.55, 1.25)]
    gap = float(rng.uniform(0.05, 0.09))
    s[_ell(u, v, 0, -0.55 - gap, 0.34, 0.58)] = 120.0
    s[_ell(u, v, 0, -0.55 - gap, 0.3, 0.55)] = 1900.0
    s[_ell(u, v, 0, 0.55 + gap, 0.32, 0.52)] = 120.0
    s[_ell(u, v, 0, 0.55 + gap, 0.29, 0.5)] = 1850.0
    cartilage = _ell(u, v, 0, -0.55 - gap, 0.34, 0.6) & ~_ell(u, v, 0, -0.55 - gap, 0.34, 0.58) & (v > -0.1)
    s[cartilage] = 1100.0
    menisci = np.zeros((n, n), bool)
    for side in (-1, 1):
        du = side * u - 0.14
        menisci |= (du > 0) & (du < 0.2) & (np.abs(v) < gap * (0.4 + 4.0 * du))
    s[menisci] = 70.0
    if tear:
        side = 1 if rng.random() < 0.5 else -1
        angle = float(rng.uniform(-0.6, 0.6))
        line = np.abs((side * u - 0.25) * math.sin(angle) - v * math.cos(angle)) < 0.018
        s[line & menisci & (np.abs(side * u - 0.25) < 0.1)] = float(rng.uniform(1300, 1800))
    return _mr_finish(rng, s, "KNEE")


def _mr_brain(rng) -> Pixels:
    """Axial brain: scalp, skull, CSF, grey and white matter, ventricles."""
    n = _mr_size(rng)
    u, v = _grid(rng, n, n)
    s = np.zeros((n, n), np.float32)
    rx, ry = rng.uniform(0.68, 0.78), rng.uniform(0.82, 0.92)
    s[_ell(u, v, 0, 0, rx, ry)] = 1500.0
    s[_ell(u, v, 0, 0, rx - 0.04, ry - 0.04)] = 90.0
    s[_ell(u, v, 0, 0, rx - 0.08, ry - 0.08)] = 350.0
    grey = _ell(u, v, 0, 0, rx - 0.1, ry - 0.1)
    s[grey] = 1100.0 + 80 * _noise(rng, n, n, 20)[grey]
    white = _ell(u, v, 0, 0.02, rx - 0.22, ry - 0.25) & (_noise(rng, n, n, 12) > -1.2)
    s[white] = 1550.0
    tilt = float(rng.uniform(-0.2, 0.2))
    for side in (-1, 1):
        s[_ell(u, v, side * 0.08, -0.05, rng.uniform(0.04, 0.07), rng.uniform(0.16, 0.24), tilt)] = 300.0
    return _mr_finish(rng, s, "BRAIN")


# ------------------------------------------------------------------------------------------- US


def _us_sector(h: int, w: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fan-shaped field of view: (inside mask, depth 0..1, lateral -1..1) per pixel."""
    apex_x, apex_y = w / 2 + rng.uniform(-10, 10), -0.06 * h
    y = np.arange(h, dtype=np.float32)[:, None] - apex_y
    x = np.arange(w, dtype=np.float32)[None, :] - apex_x
    r = np.sqrt(x * x + y * y) / (1.02 * h)
    a = np.arctan2(x, y) / math.radians(float(rng.uniform(32, 40)))
    return (r > 0.08) & (r < 1.0) & (np.abs(a) < 1.0), r, a


def _us_finish(rng, echo: np.ndarray, inside: np.ndarray, depth: np.ndarray, part: str) -> Pixels:
    """Speckle (laterally elongated Rayleigh), attenuation, log compression; some RGB with overlay."""
    from PIL import Image

    h, w = echo.shape
    re = rng.standard_normal((h // 2, w // 5)).astype(np.float32)
    im = rng.standard_normal((h // 2, w // 5)).astype(np.float32)
    speckle = np.hypot(re, im)
    speckle = np.asarray(Image.fromarray(speckle, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    amp = echo * speckle * (1.0 - 0.45 * depth)
    img = 255.0 * np.log1p(8.0 * amp) / math.log1p(8.0 * 1.6)
    img = np.clip(img, 0, 255) * inside
    grey = img.astype(np.uint8)
    if rng.random() < 0.3:
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        y0, x0 = int(rng.integers(5, 30)), int(rng.integers(5, 60))
        rgb[y0 : y0 + 12, x0 : x0 + 40] = (230, 200, 40)  # UI marker outside the fan
        return Pixels(rgb, "US", part, "RGB", 8, False, 0.2)
    return Pixels(grey, "US", part, "MONOCHROME2", 8, False, 0.2)


def _us_frame(rng):
    """A fan on a 480 x 640 frame and canonical coordinates in it."""
    h, w = 480, 640
    inside, depth, lateral = _us_sector(h, w, rng)
    u, v = _grid(rng, h, w, scale=(0.8, 1.15), rot=0.3, shift=0.1)
    return h, w, inside, depth, u, v


def _us_thyroid(rng) -> Pixels:
    """Thyroid: two lobes with isthmus, strap muscles, anechoic carotids, tracheal shadow."""
    h, w, inside, depth, u, v = _us_frame(rng)
    e = np.full((h, w), 0.35, np.float32)
    e[(v > -0.55) & (v < -0.45)] = 0.22
    lobes = _ell(u, v, -0.28, -0.2, 0.22, 0.14) | _ell(u, v, 0.28, -0.2, 0.22, 0.14)
    lobes |= _ell(u, v, 0, -0.3, 0.12, 0.05)
    e[lobes] = 0.7
    for side in (-1, 1):
        e[_ell(u, v, side * 0.55, -0.18, 0.08, 0.08)] = 0.02
    trachea = _ell(u, v, 0, -0.12, 0.1, 0.08)
    e[trachea] = 1.2
    e[(np.abs(u) < 0.09) & (v > -0.05)] = 0.04
    return _us_finish(rng, e, inside, depth, "NECK")


def _us_gb(rng) -> Pixels:
    """Gallbladder: anechoic pear with bright wall in liver, posterior enhancement, maybe a stone."""
    h, w, inside, depth, u, v = _us_frame(rng)
    e = np.full((h, w), 0.45, np.float32) + 0.05 * _noise(rng, h, w, 6)
    theta = float(rng.uniform(-0.6, 0.6))
    cx, cy = float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.25, 0.05))
    rx, ry = float(rng.uniform(0.22, 0.32)), float(rng.uniform(0.09, 0.14))
    e[_ell(u, v, cx, cy, rx + 0.02, ry + 0.02, theta)] = 0.9
    lumen = _ell(u, v, cx, cy, rx, ry, theta)
    e[(np.abs(u - cx) < rx * 0.8) & (v > cy + ry)] *= 1.35
    e[lumen] = 0.02
    if rng.random() < 0.4:
        sx = cx + float(rng.uniform(-0.5, 0.5)) * rx
        e[_ell(u, v, sx, cy + ry * 0.5, 0.04, 0.03)] = 1.6
        e[(np.abs(u - sx) < 0.035) & (v > cy + ry * 0.5 + 0.03)] = 0.03
    return _us_finish(rng, e, inside, depth, "ABDOMEN")


def _us_kidney(rng) -> Pixels:
    """Kidney: hypoechoic cortex, dark pyramids, bright central sinus, echogenic fat rim."""
    h, w, inside, depth, u, v = _us_frame(rng)
    e = np.full((h, w), 0.4, np.float32) + 0.05 * _noise(rng, h, w, 6)
    theta = float(rng.uniform(-0.5, 0.5))
    rx, ry = float(rng.uniform(0.42, 0.55)), float(rng.uniform(0.2, 0.27))
    cy = float(rng.uniform(-0.15, 0.1))
    e[_ell(u, v, 0, cy, rx + 0.04, ry + 0.04, theta)] = 0.75
    e[_ell(u, v, 0, cy, rx, ry, theta)] = 0.28
    c, s = math.cos(theta), math.sin(theta)
    for k in range(int(rng.integers(4, 7))):
        t = (k + 0.5) / 6.0 * 2 * math.pi
        px, py = 0.62 * rx * math.cos(t), 0.6 * ry * math.sin(t)
        e[_ell(u, v, px * c - py * s, cy + px * s + py * c, 0.05, 0.04, t)] = 0.12
    e[_ell(u, v, 0, cy, rx * 0.5, ry * 0.35, theta) & (_noise(rng, h, w, 25) > -0.8)] = 0.9
    return _us_finish(rng, e, inside, depth, "KIDNEY")


_GENERATORS = {
    "CT/lung/normal": lambda rng: _ct_lung(rng, "normal"),
    "CT/lung/nodule": lambda rng: _ct_lung(rng, "nodule"),
    "CT/lung/interstitial_lung_disease": lambda rng: _ct_lung(rng, "ild"),
    "CT/abd/normal": lambda rng: _ct_abd(rng),
    "CT/abd/liver_lesion": lambda rng: _ct_abd(rng, lesion=True),
    "MR/knee/normal": lambda rng: _mr_knee(rng, False),
    "MR/knee/meniscal_tear": lambda rng: _mr_knee(rng, True),
    "MR/brain/normal": _mr_brain,
    "US/thyroid": _us_thyroid,
    "US/gb": _us_gb,
    "US/kidney": _us_kidney,
}

_DOWNSTREAM = {
    "CT/abd/normal": lambda rng: _ct_abd(rng, lesion=False),
    "CT/abd/liver_lesion": lambda rng: _ct_abd(rng, lesion=True),
}


def generator_for(label: str, task: str):
    """The pixel generator of a class for a task."""
    return (_DOWNSTREAM if task == "downstream" else _GENERATORS)[label]
