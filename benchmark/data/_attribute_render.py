"""Rendering for the procedural attribute dataset (see :mod:`benchmark.data.attributes`).

Hand-written: no library draws attribute-defined figures with controlled nuisance. PIL's ImageDraw draws the
polygons and lines, numpy the patterns and the background; everything is drawn at twice the target size and
box-filtered down, which anti-aliases the edges.

A figure is a *body* (shape, colour) filled with a *pattern* (kind, colour), an *appendage* (kind, colour) drawn
behind the body, and a *border*. Class-defining values are the attributes; everything drawn from a
:class:`Nuisance` (position, scale, rotation, background, colour jitter, pattern phase, pixel noise) varies per image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

#: The attribute vocabulary: attribute name (as the SAGA prompt names it) -> its values, in a fixed order.
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "body shape": ("circle", "square", "triangle", "hexagon", "star", "cross"),
    "body color": ("red", "orange", "yellow", "green", "blue", "purple"),
    "pattern": ("stripes", "dots", "checker", "rings"),
    "pattern color": ("white", "black"),
    "appendage": ("antennae", "legs", "tail", "wings"),
    "appendage color": ("red", "orange", "yellow", "green", "blue", "purple"),
    "border style": ("thin", "thick", "dashed"),
}
ATTRIBUTES: tuple[str, ...] = tuple(ATTRIBUTE_VALUES)

_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (240, 140, 20),
    "yellow": (235, 210, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
_BORDER_RGB = (30, 30, 30)
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Nuisance:
    """The per-image values that do not define the class. Offsets and scale are fractions of the image size."""

    offset_x: float
    offset_y: float
    scale: float
    rotation_deg: float
    background_rgb: tuple[float, float, float]
    color_shift: tuple[float, float, float]
    brightness: float
    pattern_phase: tuple[float, float]
    texture_seed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_nuisance(rng: np.random.Generator) -> Nuisance:
    """Draw one image's nuisance values. Ranges are ours, chosen so that raw pixels do not solve retrieval."""
    return Nuisance(
        offset_x=float(rng.uniform(-0.12, 0.12)),
        offset_y=float(rng.uniform(-0.12, 0.12)),
        scale=float(rng.uniform(0.8, 1.15)),
        # Small rotations only: a half turn would map antennae onto legs, and 45 degrees a square onto a diamond.
        rotation_deg=float(rng.uniform(-20.0, 20.0)),
        background_rgb=tuple(float(v) for v in rng.uniform(110, 200) + rng.uniform(-25, 25, size=3)),
        color_shift=tuple(float(v) for v in rng.uniform(-15, 15, size=3)),
        brightness=float(rng.uniform(0.88, 1.12)),
        pattern_phase=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))),
        texture_seed=int(rng.integers(2**31)),
    )


def validate_attributes(attributes: dict[str, str]) -> None:
    """Raise ``ValueError`` unless ``attributes`` gives one known value for every attribute."""
    missing = [name for name in ATTRIBUTES if name not in attributes]
    extra = [name for name in attributes if name not in ATTRIBUTE_VALUES]
    if missing or extra:
        raise ValueError(f"Attributes must be exactly {list(ATTRIBUTES)}; missing {missing}, unknown {extra}.")
    for name, value in attributes.items():
        if value not in ATTRIBUTE_VALUES[name]:
            raise ValueError(f"Unknown value '{value}' for '{name}'. Allowed: {', '.join(ATTRIBUTE_VALUES[name])}.")


def _body_polygon(shape: str) -> np.ndarray:
    """The body outline in local units (radius about 1, y pointing down), as an (n, 2) array."""
    if shape == "circle":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if shape == "square":
        return np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]])
    if shape in ("triangle", "hexagon"):
        n, radius = (3, 1.15) if shape == "triangle" else (6, 1.0)
        angles = -np.pi / 2 + np.arange(n) * 2 * np.pi / n
        return radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.15, 0.55)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    if shape == "cross":
        a, b = 0.38, 1.0
        return np.array(
            [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]
        )
    raise ValueError(f"Unknown body shape '{shape}'")


def _pattern_mask(kind: str, u: np.ndarray, v: np.ndarray, phase: tuple[float, float]) -> np.ndarray:
    """Where the pattern colour shows, from local coordinates (periods in body radii)."""
    pu, pv = phase
    if kind == "stripes":  # diagonal stripes, period 0.5
        return ((u + v) / 0.5 + pu) % 1.0 < 0.45
    if kind == "dots":  # a square grid of dots, period 0.55, radius 0.15
        du = (u / 0.55 + pu) % 1.0 - 0.5
        dv = (v / 0.55 + pv) % 1.0 - 0.5
        return du**2 + dv**2 < (0.15 / 0.55) ** 2
    if kind == "checker":  # period 0.45 per square
        return (np.floor(u / 0.45 + pu) + np.floor(v / 0.45 + pv)) % 2 == 0
    if kind == "rings":  # concentric rings about the body centre (the phase does not move them)
        return (np.sqrt(u**2 + v**2) / 0.4) % 1.0 < 0.45
    raise ValueError(f"Unknown pattern '{kind}'")


def _appendage_parts(kind: str) -> list[tuple[str, np.ndarray, float]]:
    """The appendage as drawing primitives in local units: ("polygon"|"line"|"dot", points, width or radius)."""
    if kind == "antennae":
        parts: list[tuple[str, np.ndarray, float]] = []
        for s in (-1, 1):
            parts.append(("line", np.array([[0.25 * s, -0.3], [0.6 * s, -1.5]]), 0.12))
            parts.append(("dot", np.array([[0.6 * s, -1.5]]), 0.2))
        return parts
    if kind == "legs":
        parts = []
        for s in (-1, 1):
            parts.append(("line", np.array([[0.4 * s, 0.3], [0.45 * s, 1.45]]), 0.16))
            parts.append(("line", np.array([[0.45 * s, 1.45], [0.75 * s, 1.45]]), 0.16))
        return parts
    if kind == "tail":  # a forked fish tail on the right
        return [("polygon", np.array([[0.3, 0.0], [1.65, -0.55], [1.4, 0.0], [1.65, 0.55]]), 0.0)]
    if kind == "wings":  # a swept wing either side
        return [
            ("polygon", np.array([[-0.3 * s, -0.2], [-1.7 * s, -0.75], [-1.45 * s, 0.25], [-0.3 * s, 0.3]]), 0.0)
            for s in (-1, 1)
        ]
    raise ValueError(f"Unknown appendage '{kind}'")


def _closed_path(points: np.ndarray, step: float) -> np.ndarray:
    """Points spaced ``step`` apart along the closed polygon ``points`` (for dashed borders)."""
    ring = np.vstack([points, points[:1]])
    seg = np.linalg.norm(np.diff(ring, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.0, cum[-1], step)
    return np.stack([np.interp(t, cum, ring[:, 0]), np.interp(t, cum, ring[:, 1])], 1)


def render_with_nuisance(attributes: dict[str, str], nuisance: Nuisance, image_size: int) -> np.ndarray:
    """Render one figure with the given attribute values and nuisance, as a uint8 ``H×W×3`` array."""
    validate_attributes(attributes)
    if not isinstance(image_size, int | np.integer) or image_size < 16:
        raise ValueError(f"image_size must be an integer of at least 16 pixels, got {image_size!r}")
    size = image_size * _SUPERSAMPLE
    tex = np.random.default_rng(nuisance.texture_seed)
    shift = np.asarray(nuisance.color_shift)

    def color(name: str) -> tuple[int, ...]:
        rgb = np.clip(np.asarray(_COLORS[name]) * nuisance.brightness + shift, 0, 255)
        return tuple(int(c) for c in rgb)

    # Background: the base colour plus a smooth random texture (4×4 noise upsampled bicubically), mostly in
    # brightness with a little colour.
    coarse = tex.normal(0.0, 22.0, size=(4, 4, 1)) + tex.normal(0.0, 8.0, size=(4, 4, 3))
    coarse += np.asarray(nuisance.background_rgb)
    low = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)

    center = size * (0.5 + np.array([nuisance.offset_x, nuisance.offset_y]))
    radius = size * 0.22 * nuisance.scale
    theta = math.radians(nuisance.rotation_deg)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])

    def to_image(local: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in (center + radius * local @ rot.T)]

    draw = ImageDraw.Draw(low)
    fill = color(attributes["appendage color"])
    for kind, points, width in _appendage_parts(attributes["appendage"]):
        if kind == "polygon":
            draw.polygon(to_image(points), fill=fill)
        elif kind == "line":
            draw.line(to_image(points), fill=fill, width=max(1, round(width * radius)))
        else:
            (cx, cy), r = to_image(points)[0], width * radius
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)

    body = _body_polygon(attributes["body shape"])
    outline = to_image(body)
    mask_img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask_img).polygon(outline, fill=255)
    # Patterns are computed only inside the body's bounding box (the costly part of rendering).
    x0, y0 = (max(0, int(c)) for c in np.min(outline, axis=0))
    x1, y1 = (min(size, int(c) + 2) for c in np.max(outline, axis=0))
    canvas = np.asarray(low).copy()
    box = canvas[y0:y1, x0:x1]
    body_mask = np.asarray(mask_img)[y0:y1, x0:x1] > 127
    # Local coordinates of the pixel centres: the inverse rotation (rot is orthogonal) of (pixel - centre) / radius.
    dx = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - center[0]) / radius)[None, :]
    dy = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - center[1]) / radius)[:, None]
    u = dx * np.float32(rot[0, 0]) + dy * np.float32(rot[1, 0])
    v = dx * np.float32(rot[0, 1]) + dy * np.float32(rot[1, 1])
    pattern = _pattern_mask(attributes["pattern"], u, v, nuisance.pattern_phase)
    box[body_mask] = color(attributes["body color"])
    box[body_mask & pattern] = color(attributes["pattern color"])

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    style = attributes["border style"]
    if style == "dashed":
        path = to_image(_closed_path(body, 0.12))
        width = max(1, round(0.12 * radius))
        for i in range(0, len(path) - 1, 4):  # two steps on, two off
            draw.line(path[i : i + 3], fill=_BORDER_RGB, width=width)
    else:
        width = max(1, round((0.06 if style == "thin" else 0.2) * radius))
        draw.line(outline + outline[:1], fill=_BORDER_RGB, width=width, joint="curve")

    pixels = np.asarray(image.reduce(_SUPERSAMPLE), dtype=np.float32)  # box filter down to the target size
    pixels += tex.normal(0.0, 6.0, size=pixels.shape).astype(np.float32)  # sensor-like pixel noise
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
