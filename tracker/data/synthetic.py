"""The embedded synthetic tracking benchmark, written in GOT-10k's layout.

    python -m tracker.data.synthetic root=DIR train_sequences=N val_sequences=M frames=F seed=S [knob=value ...]

Scenes are built from the natural images bundled in scikit-image's wheel (nothing is downloaded): a
textured background seen through a panning camera; a target cut from a natural image with an organic
shape, moving with acceleration, changing scale, aspect and appearance; look-alike distractors cut from
the same image; occluders that pass over it; illumination change, motion blur, sensor noise; and a
target that leaves the frame for a few frames (absence.label). Each factor is a knob; `difficulty`
(easy, medium, hard) sets them together and an explicit knob wins over the preset. `sources=held_out` builds
scenes from other bundled images only (none of the default set's), for a held-out transfer benchmark.

Every sequence draws from its own generator seeded by (seed, split, index): the same config writes
byte-identical annotations whatever the number of worker processes. `ensure_synthetic` generates a config
once into a cache directory keyed by the config, and reuses it afterwards.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, List, NamedTuple, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..config import not_allowed
from ..io import file_lock, stable_hash

GENERATOR_VERSION = 1  # bump when a change alters what a config generates (invalidates the cache)
MARKER = "synthetic.json"  # written last into a complete root: the resolved config

PRESETS: dict[str, dict[str, Any]] = {
    "easy": dict(object_size=[0.15, 0.30], speed=1.5, acceleration=0.3, scale_change=0.01, aspect_change=0.01,
                 appearance_change=0.005, camera_pan=0.5, occlusion=0.0, distractors=0, illumination=0.1,
                 motion_blur=0.0, out_of_view=0.0, noise=2.0),
    "medium": dict(object_size=[0.10, 0.30], speed=3.0, acceleration=0.6, scale_change=0.02, aspect_change=0.015,
                   appearance_change=0.01, camera_pan=1.5, occlusion=0.5, distractors=2, illumination=0.25,
                   motion_blur=0.5, out_of_view=0.3, noise=3.0),
    "hard": dict(object_size=[0.07, 0.30], speed=5.0, acceleration=1.0, scale_change=0.03, aspect_change=0.025,
                 appearance_change=0.02, camera_pan=3.0, occlusion=0.8, distractors=4, illumination=0.4,
                 motion_blur=1.0, out_of_view=0.5, noise=5.0),
}
KNOBS = tuple(PRESETS["medium"])


@dataclass
class SyntheticConfig:
    """What the generator writes. Knobs left at None take the `difficulty` preset's value."""

    root: Optional[str] = None  # where to write; None: the cache (runs/data/synthetic-<key>)
    train_sequences: int = 100
    val_sequences: int = 25
    frames: int = 60
    seed: int = 0
    width: int = 320
    height: int = 240
    difficulty: str = "medium"
    sources: str = "default"  # the scikit-image images scenes are cut from: a key of SOURCES
    jpeg_quality: int = 90
    workers: int = 0  # processes; 0: one per core. Does not change what is written
    object_size: Optional[List[float]] = None  # [min, max] of sqrt(w * h) at the start, times the short side
    speed: Optional[float] = None  # typical target speed, pixels per frame
    acceleration: Optional[float] = None  # largest change of velocity per frame, pixels per frame^2
    scale_change: Optional[float] = None  # std of the per-frame log-scale step
    aspect_change: Optional[float] = None  # std of the per-frame log-aspect step
    appearance_change: Optional[float] = None  # drift of the target's texture window per frame (its size = 1)
    camera_pan: Optional[float] = None  # typical camera speed, pixels per frame
    occlusion: Optional[float] = None  # probability that an occluder passes over the target in a sequence
    distractors: Optional[int] = None  # at most this many look-alike objects per sequence
    illumination: Optional[float] = None  # amplitude of global and directional lighting change
    motion_blur: Optional[float] = None  # blur length in pixels per pixel of motion per frame
    out_of_view: Optional[float] = None  # probability that the target leaves the frame for a few frames
    noise: Optional[float] = None  # sensor noise std, in 8-bit levels

    def __post_init__(self) -> None:
        def bad(field: str, value: Any, allowed: str) -> ValueError:
            return not_allowed(f"synthetic.{field}", value, allowed, ValueError)

        if self.difficulty not in PRESETS:
            raise bad("difficulty", self.difficulty, f"one of {sorted(PRESETS)}")
        if self.sources not in SOURCES:
            raise bad("sources", repr(self.sources), f"one of {sorted(SOURCES)}")
        for field in ("train_sequences", "val_sequences", "workers"):
            if getattr(self, field) < 0:
                raise bad(field, getattr(self, field), ">= 0")
        if self.frames < 2:
            raise bad("frames", self.frames, ">= 2")
        if min(self.width, self.height) < 32:
            raise bad("width/height", (self.width, self.height), ">= 32 pixels")
        if not 1 <= self.jpeg_quality <= 100:
            raise bad("jpeg_quality", self.jpeg_quality, "1..100")
        if self.object_size is not None and not (len(self.object_size) == 2 and
                                                 0 < self.object_size[0] <= self.object_size[1] <= 0.9):
            raise bad("object_size", self.object_size, "[min, max] with 0 < min <= max <= 0.9")
        for field in KNOBS:
            value = getattr(self, field)
            if field != "object_size" and value is not None and value < 0:
                raise bad(field, value, ">= 0")
        for field in ("occlusion", "out_of_view"):
            value = getattr(self, field)
            if value is not None and value > 1:
                raise bad(field, value, "a probability in [0, 1]")

    def knobs(self) -> dict[str, Any]:
        """Every knob's value: the explicit one, else the preset's."""
        values = {k: PRESETS[self.difficulty][k] if getattr(self, k) is None else getattr(self, k) for k in KNOBS}
        values["object_size"] = [float(v) for v in values["object_size"]]
        return values

    def content(self) -> dict[str, Any]:
        """Everything that decides what is written (the cache key's input). `sources` enters only when it is
        not "default", so that the key of every config written before it existed is unchanged."""
        fields = ("train_sequences", "val_sequences", "frames", "seed", "width", "height", "jpeg_quality")
        content = {"version": GENERATOR_VERSION, **{f: getattr(self, f) for f in fields}, **self.knobs()}
        if self.sources != "default":
            content["sources"] = self.sources
        return content

    def key(self) -> str:
        return stable_hash(self.content(), 12, "sha1")


# ----------------------------------------------------------------------------------------------- textures

class SourceImages(NamedTuple):
    """scikit-image bundled images (skimage.data function names) a benchmark's scenes are cut from."""

    colour: tuple[str, ...]  # targets, and 60 % of backgrounds and occluders
    gray: tuple[str, ...]  # tinted: the other backgrounds and occluders
    tinted_targets: tuple[str, ...] = ()  # images of `gray` also cut (tinted) into targets: too few colour ones
    # the share of draws that are procedural textures (`procedural_texture`) instead of an image, and the share
    # of image draws recoloured (channels permuted, some inverted): so a trunk learns to match the template, not
    # to recognise the few images it saw
    procedural: float = 0.0
    recolour: float = 0.0


COLOUR_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
GRAY_IMAGES = ("brick", "grass", "gravel", "camera", "moon", "coins", "cell", "clock", "page", "text")
# held_out: every other image of the wheel (no download) that is textured and not a copy of a default one;
# microaneurysms (low contrast, like moon or cell) only as a background or occluder, lfw_subset also as a
# tinted target (two colour images only). Left out: cat (the same pixels as chelsea), stereo_motorcycle's
# right view (the left one, shifted) and its disparity map (smooth), colorwheel (smooth gradients, no
# texture), horse, binary_blobs, checkerboard, shepp_logan_phantom (binary or piecewise flat), brain, cells3d,
# eagle, kidney, lily, skin, ... (downloaded, not in the wheel).
SOURCES: dict[str, SourceImages] = {
    "default": SourceImages(COLOUR_IMAGES, GRAY_IMAGES),
    "held_out": SourceImages(("stereo_motorcycle", "logo"), ("lfw_subset", "microaneurysms"),
                             tinted_targets=("lfw_subset",)),
    # the default images, half the draws replaced by procedural textures and half the rest recoloured
    "varied": SourceImages(COLOUR_IMAGES, GRAY_IMAGES, procedural=0.5, recolour=0.5),
}


def _load(name: str) -> np.ndarray:
    """A bundled image as uint8 (H, W, 3) or (H, W), alpha dropped."""
    import skimage.data

    if name == "stereo_motorcycle":
        image = skimage.data.stereo_motorcycle()[0]  # the left view
    elif name == "lfw_subset":  # 200 faces and non-faces of 25 x 25 pixels in [0, 1]: a 10 x 20 mosaic
        image = (skimage.data.lfw_subset().reshape(10, 20, 25, 25).transpose(0, 2, 1, 3).reshape(250, 500)
                 * 255 + 0.5).astype(np.uint8)
    else:
        image = getattr(skimage.data, name)()
    return np.ascontiguousarray(image[..., :3] if image.ndim == 3 else image)


@lru_cache(maxsize=None)
def textures(source: str = "default") -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(colour, gray) images of SOURCES[source], uint8 (H, W, 3) and (H, W)."""
    images = SOURCES[source]
    return tuple(_load(n) for n in images.colour), tuple(_load(n) for n in images.gray)


def _tinted(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tint = rng.uniform(0.35, 1.0, 3)
    return (gray[..., None] * tint).astype(np.uint8)


def _palette(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) through a random 3-5 colour map: uint8 (H, W, 3)."""
    stops = rng.uniform(0, 255, (int(rng.integers(3, 6)), 3))
    at = np.linspace(0.0, 1.0, len(stops))
    return np.stack([np.interp(values, at, stops[:, c]) for c in range(3)], -1).astype(np.uint8)


def _fractal_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Octaves of upsampled white noise (1/f-like), normalised to [0, 1]."""
    total = np.zeros((size, size), np.float32)
    base = int(rng.integers(2, 6))
    for octave in range(5):
        cells = base * 2 ** octave
        noise = Image.fromarray(rng.normal(0, 1, (cells, cells)).astype(np.float32), mode="F")
        total += 0.55 ** octave * np.asarray(noise.resize((size, size), Image.Resampling.BICUBIC))
    return (total - total.min()) / max(float(np.ptp(total)), 1e-6)


def procedural_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A textured colour image (size, size, 3) uint8 of one of four kinds: fractal noise, oriented gratings,
    scattered ellipses, or tiles, each through a random colour map; unlimited variety, nothing downloaded."""
    from PIL import ImageDraw, ImageFilter

    kind = int(rng.integers(4))
    u = np.arange(size, dtype=np.float32)
    x, y = np.meshgrid(u, u)
    if kind == 0:
        return _palette(rng, _fractal_noise(rng, size))
    if kind == 1:
        values = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            theta, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
            values += np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period + rng.uniform(0, 6.3))
        values += 0.6 * (_fractal_noise(rng, size) - 0.5)
        return _palette(rng, (values - values.min()) / max(float(np.ptp(values)), 1e-6))
    if kind == 2:
        image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(20, 80))):
            cx, cy, rx, ry = rng.uniform(0, size), rng.uniform(0, size), *rng.uniform(4, size / 6, 2)
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        return np.asarray(image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5)))))
    tile = rng.uniform(8, 40)
    cells = (np.floor(x / tile) + np.floor(y / tile * rng.uniform(0.5, 2.0))) % int(rng.integers(2, 5))
    values = cells / max(float(cells.max()), 1.0) + 0.35 * _fractal_noise(rng, size)
    return _palette(rng, values / max(float(values.max()), 1e-6))


def _recoloured(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Channels permuted, each inverted with probability 1/3: other colours, the same structure."""
    image = image[..., rng.permutation(3)]
    invert = rng.random(3) < 1 / 3
    return np.where(invert, 255 - image, image).astype(np.uint8)


def _source_image(rng: np.random.Generator, source: str = "default", colour_only: bool = False) -> np.ndarray:
    """An image of SOURCES[source]: `colour_only` (a target): a colour one, or a tinted one of its
    `tinted_targets`; else a colour one (60 %) or a tinted gray one. With `procedural` or `recolour` set,
    that share of draws is a procedural texture or a recoloured image instead (no draw is spent otherwise, so
    the other sources generate what they always did)."""
    images = SOURCES[source]
    if images.procedural and rng.random() < images.procedural:
        return procedural_texture(rng)
    image = _drawn_image(rng, source, colour_only)
    if images.recolour and image.ndim == 3 and rng.random() < images.recolour:
        return _recoloured(image, rng)
    return image


def _drawn_image(rng: np.random.Generator, source: str, colour_only: bool) -> np.ndarray:
    images = SOURCES[source]
    colour, gray = textures(source)
    if colour_only:  # with no tinted_targets, the same draws as colour[rng.integers(len(colour))]
        i = int(rng.integers(len(colour) + len(images.tinted_targets)))
        if i < len(colour):
            return colour[i]
        return _tinted(gray[images.gray.index(images.tinted_targets[i - len(colour)])], rng)
    if rng.random() < 0.6:
        return colour[rng.integers(len(colour))]
    return _tinted(gray[rng.integers(len(gray))], rng)


def _textured_window(image: np.ndarray, rng: np.random.Generator, aspect: float, min_std: float = 18.0
                     ) -> tuple[float, float, float, float]:
    """A window (x0, y0, x1, y1) of `image` with the given aspect that is not flat (std over min_std)."""
    h, w = image.shape[:2]
    best, best_std = None, -1.0
    for _ in range(12):
        side = rng.uniform(0.15, 0.45) * min(h, w)
        ww, wh = side * math.sqrt(aspect), side / math.sqrt(aspect)
        ww, wh = min(ww, w - 1), min(wh, h - 1)
        x0, y0 = rng.uniform(0, w - ww), rng.uniform(0, h - wh)
        patch = image[int(y0):int(y0 + wh), int(x0):int(x0 + ww)]
        std = float(patch.std()) if patch.size else 0.0
        if std > best_std:
            best, best_std = (x0, y0, x0 + ww, y0 + wh), std
        if std >= min_std:
            break
    return best


# ----------------------------------------------------------------------------------------------- shapes

def _shape(rng: np.random.Generator, kind: int | None = None, size: int = 96) -> tuple[np.ndarray, int]:
    """An anti-aliased shape mask (size, size) in [0, 1]: ellipse, rounded rectangle or blob."""
    kind = int(rng.integers(3)) if kind is None else kind
    u = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(u, u)
    if kind == 0:
        level = np.sqrt(x ** 2 + y ** 2)
    elif kind == 1:
        p = rng.uniform(3, 8)
        level = (np.abs(x) ** p + np.abs(y) ** p) ** (1 / p)
    else:
        theta, r = np.arctan2(y, x), np.sqrt(x ** 2 + y ** 2)
        radius = np.ones_like(theta)
        for k in (2, 3, 5):
            radius += rng.uniform(0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        level = r / (radius / radius.max())
    edge = 2.0 / size
    return np.clip((1.0 - level) / edge + 0.5, 0.0, 1.0).astype(np.float32), kind


def _tight_box(alpha: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) of the mask's pixels with alpha >= 0.5, as fractions of its size."""
    rows, cols = np.flatnonzero(alpha.max(1) >= 0.5), np.flatnonzero(alpha.max(0) >= 0.5)
    h, w = alpha.shape
    return np.array([cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h])


def _blur(image: np.ndarray, velocity: np.ndarray, strength: float, grow: bool) -> tuple[np.ndarray, int]:
    """Motion blur along `velocity`: the mean of copies shifted along it (length = strength * speed, at
    most 15). `grow`: the result is padded by the returned margin on every side (a sprite's blur spills
    out of its rectangle); otherwise it keeps its size, edges repeated (a frame)."""
    speed = float(np.hypot(*velocity))
    length = min(int(round(speed * strength)), 15)
    if length < 2:
        return image, 0
    ux, uy = velocity / speed
    padded = np.pad(image, ((length, length), (length, length), (0, 0)), mode="constant" if grow else "edge")
    out = np.zeros_like(padded)
    for k in range(length):
        s = k - (length - 1) / 2
        out += np.roll(padded, (int(round(s * uy)), int(round(s * ux))), axis=(0, 1))
    out /= length
    return (out, length) if grow else (out[length:-length, length:-length], 0)


class Sprite:
    """A textured shape cut from a source image; rendered at any size, its texture window can drift."""

    def __init__(self, image: np.ndarray, window: tuple[float, float, float, float], shape: np.ndarray,
                 gain: np.ndarray | None = None):
        self.source = Image.fromarray(image)
        self.window = np.array(window, dtype=np.float64)
        self.shape = Image.fromarray((shape * 255).astype(np.uint8))
        self.tight = _tight_box(shape)
        self.gain = np.ones(3, np.float32) if gain is None else gain.astype(np.float32)

    def render(self, w: int, h: int, shift: np.ndarray | None = None) -> np.ndarray:
        """(h, w, 4) float32 RGBA in [0, 1]; `shift` moves the texture window (fractions of its size)."""
        window = self.window
        if shift is not None:
            size = window[2:] - window[:2]
            window = window + np.tile(shift * size, 2)
            lo = np.maximum(0 - window[:2], 0) - np.maximum(window[2:] - self.source.size, 0)
            window = window + np.tile(lo, 2)  # keep the window inside the source image
        rgb = np.asarray(self.source.resize((w, h), Image.Resampling.BILINEAR, box=tuple(window)), np.float32)
        alpha = np.asarray(self.shape.resize((w, h), Image.Resampling.BILINEAR), np.float32)
        return np.concatenate([rgb * (self.gain / 255.0), alpha[..., None] / 255.0], axis=2)


def _composite(frame: np.ndarray, rgba: np.ndarray, x0: int, y0: int) -> tuple[slice, slice, np.ndarray] | None:
    """Alpha-blends `rgba` onto `frame` with its top-left at (x0, y0); returns the frame region and the
    sprite alpha there (None when nothing lands in the frame)."""
    H, W = frame.shape[:2]
    h, w = rgba.shape[:2]
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    part = rgba[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    alpha = part[..., 3:]
    region = (slice(fy0, fy1), slice(fx0, fx1))
    frame[region] = frame[region] * (1 - alpha) + part[..., :3] * alpha
    return region[0], region[1], alpha[..., 0]


# ----------------------------------------------------------------------------------------------- motion

def _smooth_walk(rng: np.random.Generator, n: int, step: float, limit: float, revert: float = 0.05) -> np.ndarray:
    """A mean-reverting random walk in log space, clipped to [-limit, limit]."""
    values, v = np.zeros(n), 0.0
    for t in range(1, n):
        v = float(np.clip(v * (1 - revert) + rng.normal(0, step), -limit, limit))
        values[t] = v
    return values


def _trajectory(rng: np.random.Generator, n: int, W: int, H: int, sizes: np.ndarray, speed: float,
                acceleration: float, exit_at: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Centres and velocities (n, 2) of an object steered towards random waypoints with bounded
    acceleration. From frame `exit_at` it heads out of the frame, stays out for 3-7 frames, comes back."""
    def inside(t: int) -> np.ndarray:
        m = np.minimum(0.6 * sizes[t], [0.45 * W, 0.45 * H])
        return rng.uniform(m, [W - m[0], H - m[1]])

    def outside(t: int) -> np.ndarray:
        side = int(rng.integers(4))
        along = rng.uniform(0.2, 0.8)
        far = 1.2 * sizes[t].max() + 4
        return np.array([[-far, along * H], [W + far, along * H], [along * W, -far], [along * W, H + far]][side])

    p, v = inside(0), rng.normal(0, speed * 0.3, 2)
    goal, pace, state, hold = inside(0), speed * rng.uniform(0.6, 1.4), "roam", 0
    centres, velocities = np.zeros((n, 2)), np.zeros((n, 2))
    for t in range(n):
        centres[t], velocities[t] = p, v
        half = sizes[t] / 2
        out = (p[0] + half[0] < 0) or (p[0] - half[0] > W) or (p[1] + half[1] < 0) or (p[1] - half[1] > H)
        if state == "roam" and exit_at is not None and t >= exit_at:
            state, goal, pace = "leave", outside(t), max(speed, 2.0) * 1.5
        elif state == "leave" and out:
            state, hold = "away", int(rng.integers(3, 8))
        elif state == "away":
            hold -= 1
            if hold <= 0:
                state, goal, pace = "return", inside(t), max(speed, 2.0) * 1.5
        distance = float(np.hypot(*(goal - p)))
        if state in ("roam", "return") and distance < max(8.0, sizes[t].mean()):
            state, goal, pace = "roam", inside(t), speed * rng.uniform(0.6, 1.4)
        desired = np.zeros(2) if state == "away" else (goal - p) / max(distance, 1e-6) * min(pace, distance * 0.5)
        a = desired - v
        a_norm = float(np.hypot(*a))
        limit = acceleration * (3 if state != "roam" else 1)
        if a_norm > limit:
            a *= limit / a_norm
        v = v + a + rng.normal(0, 0.25 * acceleration, 2)
        p = p + v
    return centres, velocities


# ----------------------------------------------------------------------------------------------- a sequence

Placed = Optional[tuple[slice, slice, np.ndarray]]  # frame rows, columns, and the sprite's alpha there


def _draw(frame: np.ndarray, sprite: Sprite, size: np.ndarray, centre: np.ndarray, velocity: np.ndarray,
          blur: float, shift: np.ndarray | None = None) -> tuple[Placed, tuple[int, int, int, int], float]:
    """Draws a sprite of `size` centred on `centre`, motion-blurred along `velocity`. Returns where it
    landed, its unblurred rectangle (x0, y0, w, h) and its total alpha (in or out of the frame)."""
    w, h = max(int(round(size[0])), 2), max(int(round(size[1])), 2)
    rgba = sprite.render(w, h, shift)
    x0, y0 = int(round(centre[0] - w / 2)), int(round(centre[1] - h / 2))
    margin = 0
    if blur > 0:
        rgba, margin = _blur(rgba, velocity, blur, grow=True)
    return _composite(frame, rgba, x0 - margin, y0 - margin), (x0, y0, w, h), float(rgba[..., 3].sum())


def _cover(seen: np.ndarray, placed: tuple[slice, slice, np.ndarray], over: tuple[slice, slice, np.ndarray]) -> None:
    """Removes from `seen` (the target's visible alpha over `placed`) what a sprite drawn over it hides."""
    (r, c, _), (ys, xs, a) = placed, over
    y_lo, y_hi, x_lo, x_hi = max(ys.start, r.start), min(ys.stop, r.stop), max(xs.start, c.start), min(xs.stop, c.stop)
    if y_hi > y_lo and x_hi > x_lo:
        seen[y_lo - r.start:y_hi - r.start, x_lo - c.start:x_hi - c.start] *= \
            1 - a[y_lo - ys.start:y_hi - ys.start, x_lo - xs.start:x_hi - xs.start]


@dataclass
class SequenceAnnotation:
    boxes: np.ndarray  # (n, 4) x, y, w, h, clipped to the frame
    absence: np.ndarray  # (n,) 0/1
    cover: np.ndarray  # (n,) 0..8: visible share of the target in eighths (0: none)
    cut_by_image: np.ndarray  # (n,) 0/1


def render_sequence(cfg: SyntheticConfig, split: str, index: int, out_dir: Path | None = None
                    ) -> SequenceAnnotation:
    """Renders one sequence; writes its frames as JPEG into `out_dir` when given."""
    rng = np.random.default_rng([cfg.seed, {"train": 0, "val": 1}[split], index])
    k = cfg.knobs()
    n, W, H = cfg.frames, cfg.width, cfg.height

    # target: a shape cut from a natural image; size, aspect and texture window drift over time
    target_img = _source_image(rng, cfg.sources, colour_only=True)
    aspect0 = math.exp(rng.uniform(-0.7, 0.7))
    window = _textured_window(target_img, rng, aspect0)
    shape, kind = _shape(rng)
    target = Sprite(target_img, window, shape)
    size0 = rng.uniform(*k["object_size"]) * min(W, H)
    log_scale = _smooth_walk(rng, n, k["scale_change"], math.log(2.0))
    log_aspect = _smooth_walk(rng, n, k["aspect_change"], math.log(1.6))
    aspect = aspect0 * np.exp(log_aspect)
    sizes = np.stack([size0 * np.exp(log_scale) * np.sqrt(aspect), size0 * np.exp(log_scale) / np.sqrt(aspect)], 1)
    sizes = np.maximum(sizes, 6.0)
    drift = np.cumsum(rng.normal(0, k["appearance_change"], (n, 2)), axis=0)
    exit_at = None  # leaving the frame needs room to go and come back
    if n >= 16 and rng.random() < k["out_of_view"]:
        exit_at = int(rng.integers(n // 5, n // 2))
    centres, velocities = _trajectory(rng, n, W, H, sizes, k["speed"], k["acceleration"], exit_at)

    # background seen through a panning camera
    pan_range = int(min(k["camera_pan"] * n * 0.5, max(W, H))) + 2
    background_img = _source_image(rng, cfg.sources)
    world_w, world_h = W + 2 * pan_range, H + 2 * pan_range
    bh, bw = background_img.shape[:2]
    zoom = max(world_w / bw, world_h / bh) * rng.uniform(1.0, 1.6)
    bx, by = rng.uniform(0, bw - world_w / zoom), rng.uniform(0, bh - world_h / zoom)
    world = np.asarray(Image.fromarray(background_img).resize(
        (world_w, world_h), Image.Resampling.BILINEAR, box=(bx, by, bx + world_w / zoom, by + world_h / zoom)),
        np.float32) / 255.0
    if rng.random() < 0.5:
        world = world[:, ::-1]
    camera = np.zeros((n, 2))
    cam_v = rng.normal(0, k["camera_pan"], 2)
    position = np.array([pan_range, pan_range], float)
    for t in range(n):
        cam_v = 0.9 * cam_v + rng.normal(0, 0.3 * k["camera_pan"], 2)
        position = position + cam_v
        for axis in range(2):  # bounce off the world's edges
            if not 0 <= position[axis] <= 2 * pan_range:
                cam_v[axis] = -cam_v[axis]
                position[axis] = np.clip(position[axis], 0, 2 * pan_range)
        camera[t] = position
    camera_motion = np.diff(camera, axis=0, prepend=camera[:1])

    # look-alike distractors: cut from the same image near the target's window, fixed in the world
    distractors = []
    for _ in range(int(rng.integers(0, k["distractors"] + 1))):
        x0, y0, x1, y1 = window
        shift = rng.uniform(-0.35, 0.35, 2) * [x1 - x0, y1 - y0]
        ih, iw = target_img.shape[:2]
        shift = np.clip(shift, [-x0, -y0], [iw - x1, ih - y1])
        sprite = Sprite(target_img, (x0 + shift[0], y0 + shift[1], x1 + shift[0], y1 + shift[1]),
                        _shape(rng, kind if rng.random() < 0.7 else None)[0], rng.uniform(0.85, 1.15, 3))
        d_sizes = sizes * rng.uniform(0.75, 1.3)
        d_centres, d_vel = _trajectory(rng, n, W, H, d_sizes, k["speed"] * 0.7, k["acceleration"], None)
        d_centres = d_centres - (camera - camera[0])  # anchored in the world: the camera moves them
        distractors.append((sprite, d_sizes, d_centres, d_vel - camera_motion, rng.random() < 0.35))

    # occluders: bars that sweep across the target's path
    occluders = []
    if rng.random() < k["occlusion"]:
        for _ in range(1 + int(rng.random() < 0.5 * k["occlusion"])):
            t_mid = int(rng.integers(int(0.15 * n), max(int(0.85 * n), int(0.15 * n) + 1)))
            vertical = rng.random() < 0.5
            s = sizes[t_mid].mean()
            thick, length = s * rng.uniform(0.3, 0.6), s * rng.uniform(1.6, 3.0)
            dims = (thick, length) if vertical else (length, thick)
            bar_img = _source_image(rng, cfg.sources)
            bar = Sprite(bar_img, _textured_window(bar_img, rng, dims[0] / dims[1]), _shape(rng, 1)[0])
            pace = rng.uniform(1.5, 3.5) * rng.choice([-1, 1])
            offset = rng.uniform(-0.3, 0.3) * s
            occluders.append((bar, dims, t_mid, vertical, pace, offset))

    # lighting: global gain, a colour cast and a moving directional gradient
    ill = k["illumination"]
    ts = np.arange(n)
    f1, f2, ph = rng.uniform(0.5, 2.0) / n, rng.uniform(2.0, 5.0) / n, rng.uniform(0, 2 * np.pi, 4)
    gain = np.exp(ill * (0.7 * np.sin(2 * np.pi * f1 * ts + ph[0]) + 0.3 * np.sin(2 * np.pi * f2 * ts + ph[1])))
    cast = 1 + 0.3 * ill * np.sin(2 * np.pi * f1 * ts[:, None] + ph[2] + np.array([0, 2.1, 4.2]))
    light_dir = ph[3] + 2 * np.pi * f1 * ts
    gx = np.linspace(-1, 1, W, dtype=np.float32)[None, :, None]
    gy = np.linspace(-1, 1, H, dtype=np.float32)[:, None, None]

    boxes = np.zeros((n, 4))
    cover, absence, cut = (np.zeros(n, np.int64) for _ in range(3))
    for t in range(n):
        cx, cy = camera[t].astype(int)
        frame = world[cy:cy + H, cx:cx + W].copy()
        if k["motion_blur"] > 0:
            frame = _blur(frame, camera_motion[t], k["motion_blur"], grow=False)[0]
        for sprite, d_sizes, d_centres, d_vel, front in distractors:
            if not front:
                _draw(frame, sprite, d_sizes[t], d_centres[t], d_vel[t], k["motion_blur"])
        placed, rect, total = _draw(frame, target, sizes[t], centres[t], velocities[t], k["motion_blur"], drift[t])
        overs = [(s, ds[t], dc[t], dv[t]) for s, ds, dc, dv, front in distractors if front]
        for bar, dims, t_mid, vertical, pace, offset in occluders:
            centre = centres[t].copy()  # the bar slides along the target's path, sweeping across it
            axis = 0 if vertical else 1
            centre[axis] = centres[t_mid][axis] + offset + pace * (t - t_mid)
            overs.append((bar, np.array(dims), centre, np.zeros(2)))
        seen = placed[2].copy() if placed else None  # the target's alpha still visible in the frame
        for sprite, size, centre, velocity in overs:
            over = _draw(frame, sprite, size, centre, velocity, k["motion_blur"])[0]
            if over is not None and seen is not None:
                _cover(seen, placed, over)
        share = float(seen.sum()) / total if seen is not None and total > 0 else 0.0

        x0, y0, w, h = rect  # the target's tight box, unclipped
        tx0, ty0 = x0 + target.tight[0] * w, y0 + target.tight[1] * h
        tx1, ty1 = x0 + target.tight[2] * w, y0 + target.tight[3] * h
        light = gain[t] * (1 + 0.5 * ill * (math.cos(light_dir[t]) * gx + math.sin(light_dir[t]) * gy))
        frame *= light * cast[t].astype(np.float32)
        if k["noise"] > 0:
            frame += rng.standard_normal(frame.shape, dtype=np.float32) * (k["noise"] / 255.0)

        bx0, by0 = float(np.clip(tx0, 0, W)), float(np.clip(ty0, 0, H))
        bx1, by1 = float(np.clip(tx1, 0, W)), float(np.clip(ty1, 0, H))
        cover[t] = 0 if share < 1e-3 or bx1 <= bx0 or by1 <= by0 else min(max(math.ceil(share * 8 - 1e-9), 1), 8)
        absence[t] = int(cover[t] == 0)
        cut[t] = int(not absence[t] and (tx0 < 0 or ty0 < 0 or tx1 > W or ty1 > H))
        boxes[t] = (bx0, by0, bx1 - bx0, by1 - by0) if not absence[t] else (bx0, by0, 0.0, 0.0)
        if out_dir is not None:
            pixels = (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)
            Image.fromarray(pixels).save(out_dir / f"{t + 1:08d}.jpg", quality=cfg.jpeg_quality)
    return SequenceAnnotation(boxes, absence, cover, cut)


# ----------------------------------------------------------------------------------------------- writing

SPLIT_NAMES = {"train": "GOT-10k_Train", "val": "GOT-10k_Val"}


def sequence_name(split: str, index: int) -> str:
    return f"{SPLIT_NAMES[split]}_{index + 1:06d}"


def write_sequence(cfg: SyntheticConfig, split: str, index: int, split_dir: Path) -> None:
    seq_dir = split_dir / sequence_name(split, index)
    seq_dir.mkdir(parents=True, exist_ok=True)
    ann = render_sequence(cfg, split, index, seq_dir)
    (seq_dir / "groundtruth.txt").write_text("".join(f"{x:.4f},{y:.4f},{w:.4f},{h:.4f}\n" for x, y, w, h in ann.boxes))
    for name, values in (("absence", ann.absence), ("cover", ann.cover), ("cut_by_image", ann.cut_by_image)):
        (seq_dir / f"{name}.label").write_text("".join(f"{int(v)}\n" for v in values))
    (seq_dir / "meta_info.ini").write_text(
        "[METAINFO]\n"
        "url: none (LightTrack synthetic benchmark)\n"
        "begin: 00:00:00\n"
        f"end: 00:00:{cfg.frames // 10:02d}\n"
        "anno_fps: 10Hz\n"
        "object_class: textured object\n"
        "motion_class: moving\n"
        "major_class: synthetic\n"
        "root_class: object\n"
        "motion_adverb: smoothly\n"
        f"resolution: ({cfg.width}, {cfg.height})\n")


def _write_task(task: tuple[SyntheticConfig, str, int, str]) -> None:
    cfg, split, index, split_dir = task
    write_sequence(cfg, split, index, Path(split_dir))


class _SpawnedBar(tqdm):
    """The bar over spawned workers: `process_map` hands its class's write lock to every worker, and tqdm's own
    is made in the fork context, which a spawned process cannot receive; `generate` sets a spawn context's."""


def generate(cfg: SyntheticConfig, root: str | Path, progress: bool = True) -> Path:
    """Writes `root/train` and `root/val`; the marker file (the resolved config) is written last."""
    root = Path(root)
    tasks = []
    for split, count in (("train", cfg.train_sequences), ("val", cfg.val_sequences)):
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / "list.txt").write_text("".join(f"{sequence_name(split, i)}\n" for i in range(count)))
        tasks += [(cfg, split, i, str(split_dir)) for i in range(count)]
    workers = min(cfg.workers or os.cpu_count() or 1, max(len(tasks), 1))
    bar = dict(desc="synthetic data", unit="seq", disable=not progress, file=sys.stderr, mininterval=0.5)
    if workers > 1:
        import multiprocessing

        from tqdm.contrib.concurrent import process_map

        spawn = multiprocessing.get_context("spawn")  # workers start clean: no fork of a threaded parent
        _SpawnedBar.set_lock(spawn.RLock())
        process_map(_write_task, tasks, max_workers=workers, mp_context=spawn, tqdm_class=_SpawnedBar, **bar)
    else:
        for task in tqdm(tasks, **bar):
            _write_task(task)
    (root / MARKER).write_text(json.dumps(cfg.content(), indent=2, sort_keys=True) + "\n")
    return root


def ensure_synthetic(cfg: SyntheticConfig, cache_dir: str | Path = "runs/data", progress: bool = True) -> Path:
    """The root of the benchmark `cfg` describes: `cfg.root` when set (generated there if it holds no
    complete benchmark of the same content), else `cache_dir/synthetic-<key>`, generated on first use.
    Concurrent callers wait on a file lock instead of generating twice."""
    root = Path(cfg.root) if cfg.root else Path(cache_dir) / f"synthetic-{cfg.key()}"
    if _complete(root, cfg):
        return root
    with file_lock(root.parent / f".{root.name}.lock"):
        if _complete(root, cfg):
            return root
        if root.exists() and any(root.iterdir()):
            if not (root / MARKER).exists():
                raise FileExistsError(f"{root} is not empty and holds no synthetic benchmark ({MARKER}); "
                                      f"give an empty or new root")
            shutil.rmtree(root)  # an older or different synthetic benchmark: regenerate
        for stale in root.parent.glob(f".{root.name}.partial-*"):  # left by a builder that died (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        partial = root.parent / f".{root.name}.partial-{os.getpid()}"
        start = time.perf_counter()
        generate(cfg, partial, progress)
        partial.rename(root)
        if progress:
            print(f"synthetic benchmark written to {root} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return root


def _complete(root: Path, cfg: SyntheticConfig) -> bool:
    marker = root / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(cfg.content()))


def parse_args(argv: list[str]) -> SyntheticConfig:
    """`key=value` arguments (Hydra's override syntax) into a validated SyntheticConfig."""
    from omegaconf import OmegaConf

    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"arguments must be key=value, got {bad}; keys: "
                         f"{[f.name for f in dataclasses.fields(SyntheticConfig)]}")
    schema = OmegaConf.structured(SyntheticConfig)
    merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(argv))
    return OmegaConf.to_object(merged)


def main(argv: list[str] | None = None) -> int:
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
    except (ValueError, OmegaConfBaseException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    root = ensure_synthetic(cfg)
    print(json.dumps({"root": str(root), "key": cfg.key(), **cfg.content()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
