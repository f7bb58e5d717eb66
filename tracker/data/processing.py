"""STARK's crops and augmentations for a template/search pair.

Coordinates are continuous: pixel i covers [i, i + 1). A crop is the square [x0, x0 + side) x
[y0, y0 + side) of the image, side = ceil(sqrt(w * h) * factor), centred on the (jittered) box centre
and resized to `size` x `size` (bilinear, no antialiasing, as cv2.resize in STARK). Pixels outside the
image are zero and flagged True in the padding mask. A box in the crop is normalised by the side:
(x - x0) / side, ..., so the unjittered target centre lands at (0.5, 0.5) and the online tracker maps a
prediction back with x = x0 + x_norm * side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence as Seq

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Crop:
    """Where a crop lies in its image: top-left (x0, y0) and side in image pixels; output size in pixels."""

    x0: float
    y0: float
    side: float
    size: int

    @property
    def resize_factor(self) -> float:
        return self.size / self.side

    def box_to_crop(self, box: Seq[float]) -> np.ndarray:
        """Image box (x, y, w, h) in pixels -> the same box normalised to the crop."""
        x, y, w, h = box
        return np.array([(x - self.x0) / self.side, (y - self.y0) / self.side, w / self.side, h / self.side])

    def box_to_image(self, box: Seq[float]) -> np.ndarray:
        """Normalised crop box (x, y, w, h) -> image box in pixels (inverse of `box_to_crop`)."""
        x, y, w, h = box
        return np.array([self.x0 + x * self.side, self.y0 + y * self.side, w * self.side, h * self.side])


def crop_region(box: Seq[float], factor: float, scale_jitter: float = 0.0, center_jitter: float = 0.0,
                rng: np.random.Generator | None = None) -> tuple[float, float, int]:
    """The crop's centre and side for a box (x, y, w, h). With jitter (STARK's `_get_jittered_box`):
    w, h *= exp(N(0, 1) * scale_jitter) independently, the centre moves by
    sqrt(w * h) * center_jitter * (U(0, 1) - 0.5) on each axis (jittered w and h)."""
    x, y, w, h = (float(v) for v in box)
    cx, cy = x + 0.5 * w, y + 0.5 * h
    if scale_jitter > 0 or center_jitter > 0:
        if rng is None:
            raise ValueError("jitter needs a random generator")
        w, h = np.array([w, h]) * np.exp(rng.standard_normal(2) * scale_jitter)
        offset = math.sqrt(w * h) * center_jitter * (rng.random(2) - 0.5)
        cx, cy = cx + offset[0], cy + offset[1]
    side = math.ceil(math.sqrt(w * h) * factor)
    if side < 1:
        raise ValueError(f"box {list(box)} is too small to crop (side {side})")
    return cx, cy, side


def crop_image(image: Image.Image, cx: float, cy: float, side: float, size: int
               ) -> tuple[Image.Image, np.ndarray, Crop]:
    """Cuts the square of `side` pixels centred on (cx, cy), zero-padded outside the image, resized to
    `size`. Returns the crop, its padding mask (size, size; True = outside the image) and its geometry."""
    crop = Crop(cx - 0.5 * side, cy - 0.5 * side, float(side), int(size))
    out = image.transform((size, size), Image.Transform.EXTENT,
                          (crop.x0, crop.y0, crop.x0 + side, crop.y0 + side),
                          resample=Image.Resampling.BILINEAR, fillcolor=(0,) * len(image.getbands()))
    # an output pixel is padding when the image point it samples (its centre) lies outside the image
    centres = (np.arange(size) + 0.5) / crop.resize_factor
    width, height = image.size
    outside_x = (crop.x0 + centres < 0) | (crop.x0 + centres >= width)
    outside_y = (crop.y0 + centres < 0) | (crop.y0 + centres >= height)
    mask = outside_y[:, None] | outside_x[None, :]
    return out, mask, crop


@dataclass
class CropConf:
    """One crop of a pair (template or search), the data config's schema and what the processing reads."""

    size: int = 320
    factor: float = 5.0  # crop side = ceil(sqrt(w * h) * factor)
    scale_jitter: float = 0.0
    center_jitter: float = 0.0


# STARK-Lightning's crops (SPEC.md): the one place their values are written; the online tracker uses the factors
TEMPLATE = CropConf(128, 2.0)
SEARCH = CropConf(320, 5.0, 0.5, 4.5)


class PairProcessing:
    """Turns (template image, box, search image, box) into network inputs, STARK's way: jittered crops,
    then grayscale (joint, p), horizontal flip (joint, p), brightness jitter (per image), normalisation."""

    def __init__(self, template: CropConf = TEMPLATE, search: CropConf = SEARCH, grayscale: float = 0.05,
                 flip: float = 0.5, brightness: float = 0.2, mean: Seq[float] = IMAGENET_MEAN,
                 std: Seq[float] = IMAGENET_STD):
        self.settings = {"template": template, "search": search}
        self.grayscale, self.flip, self.brightness = grayscale, flip, brightness
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def to_tensor(self, image: Image.Image | np.ndarray, gain: float = 1.0) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H, W) float32, times `gain`, clamped to [0, 1], normalised."""
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float()
        return pixels.mul_(gain / 255.0).clamp_(0.0, 1.0).sub_(self.mean).div_(self.std)

    def __call__(self, template_image: Image.Image, template_box: Seq[float], search_image: Image.Image,
                 search_box: Seq[float], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        gray = rng.random() < self.grayscale
        flip = rng.random() < self.flip
        sample: dict[str, torch.Tensor] = {}
        for key, image, box in (("template", template_image, template_box), ("search", search_image, search_box)):
            s = self.settings[key]
            cx, cy, side = crop_region(box, s.factor, s.scale_jitter, s.center_jitter, rng)
            crop_img, mask, crop = crop_image(image, cx, cy, side, s.size)
            if gray:
                crop_img = crop_img.convert("L").convert("RGB")
            pixels, norm_box = np.asarray(crop_img), crop.box_to_crop(box)
            if flip:
                pixels, mask = pixels[:, ::-1], mask[:, ::-1]
                norm_box[0] = 1.0 - norm_box[0] - norm_box[2]
            gain = rng.uniform(max(0.0, 1.0 - self.brightness), 1.0 + self.brightness) if self.brightness else 1.0
            sample[key] = self.to_tensor(pixels, gain)
            sample[f"{key}_mask"] = torch.from_numpy(np.ascontiguousarray(mask))
            sample[f"{key}_box"] = torch.from_numpy(norm_box.astype(np.float32))
            sample[f"{key}_crop"] = torch.tensor([crop.x0, crop.y0, crop.side], dtype=torch.float32)
        sample["flipped"] = torch.tensor(flip)
        return sample
