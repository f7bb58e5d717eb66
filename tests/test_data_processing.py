"""Crops land where SPEC.md says, masks mark exactly the padding, boxes map back, flips stay consistent."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from tracker.data import Crop, PairProcessing, crop_image, crop_region


def marked_image(w=200, h=120, box=(80, 40, 40, 20)):
    """A grey image with the box painted red and a green pixel column right after it."""
    pixels = np.full((h, w, 3), 100, np.uint8)
    x, y, bw, bh = box
    pixels[y:y + bh, x:x + bw] = (255, 0, 0)
    return Image.fromarray(pixels)


def test_unjittered_crop_centres_the_box():
    box = (80, 40, 40, 20)
    cx, cy, side = crop_region(box, factor=2.0)
    assert (cx, cy) == (100, 50) and side == math.ceil(math.sqrt(40 * 20) * 2.0)
    crop_img, mask, crop = crop_image(marked_image(box=box), cx, cy, side, 128)
    np.testing.assert_allclose(crop.box_to_crop(box)[:2] + crop.box_to_crop(box)[2:] / 2, [0.5, 0.5])
    pixels = np.asarray(crop_img)
    assert tuple(pixels[64, 64]) == (255, 0, 0)  # the crop's centre is inside the target
    assert not mask.any()  # well inside the image: no padding
    # the target spans w / side of the crop around its centre
    red = np.flatnonzero((pixels[64] == (255, 0, 0)).all(axis=1))
    assert abs(len(red) - 40 / side * 128) <= 2


def test_padding_mask_is_exactly_where_the_image_ends():
    # a target near the bottom-right corner; side 64 resized to 64 (factor 1 px per px) for exact pixels
    image = Image.fromarray(np.full((100, 150, 3), 200, np.uint8))
    cx, cy = 140.0, 90.0
    crop_img, mask, crop = crop_image(image, cx, cy, 64, 64)
    assert (crop.x0, crop.y0) == (108.0, 58.0)
    cols_inside, rows_inside = 150 - 108, 100 - 58  # 42 columns, 42 rows come from the image
    expected = np.ones((64, 64), bool)
    expected[:rows_inside, :cols_inside] = False
    np.testing.assert_array_equal(mask, expected)
    pixels = np.asarray(crop_img)
    assert (pixels[~mask] == 200).all() and (pixels[mask] == 0).all()
    # resized crops: mask edges land at (image edge - x0) * resize factor
    _, mask2, crop2 = crop_image(image, cx, cy, 64, 128)
    assert mask2[0].tolist().index(True) == cols_inside * 2
    assert mask2[:, 0].tolist().index(True) == rows_inside * 2
    # a crop hanging off the top-left
    _, mask3, crop3 = crop_image(image, 5.0, 10.0, 40, 40)
    assert mask3[:, :15].all() and not mask3[30:, 15:].any() and mask3[:5].all()


@pytest.mark.parametrize("seed", range(5))
def test_normalised_box_maps_back_to_the_image_box(seed):
    rng = np.random.default_rng(seed)
    box = rng.uniform([0, 0, 5, 5], [300, 200, 80, 60])
    cx, cy, side = crop_region(box, 5.0, 0.5, 4.5, rng)
    crop = Crop(cx - side / 2, cy - side / 2, side, 320)
    np.testing.assert_allclose(crop.box_to_image(crop.box_to_crop(box)), box, atol=1e-9)
    # SPEC.md's back-mapping of a crop centred on the previous box: cx_img = cx + cx_prev - 0.5 * 320 / rf
    norm = crop.box_to_crop(box)
    cx_crop_px = (norm[0] + norm[2] / 2) * 320
    np.testing.assert_allclose(cx_crop_px / crop.resize_factor + cx - 0.5 * 320 / crop.resize_factor,
                               box[0] + box[2] / 2, atol=1e-9)


def test_processed_pair_maps_back_without_flip():
    image = marked_image()
    processing = PairProcessing(flip=0.0, grayscale=0.0, brightness=0.0)
    sample = processing(image, (80, 40, 40, 20), image, (80, 40, 40, 20), np.random.default_rng(0))
    assert sample["template"].shape == (3, 128, 128) and sample["search"].shape == (3, 320, 320)
    assert sample["template_mask"].dtype == torch.bool and sample["search_mask"].shape == (320, 320)
    x0, y0, side = sample["search_crop"].tolist()
    back = Crop(x0, y0, side, 320).box_to_image(sample["search_box"].double().numpy())
    np.testing.assert_allclose(back, (80, 40, 40, 20), atol=1e-3)
    t = sample["template_box"].numpy()
    np.testing.assert_allclose([t[0] + t[2] / 2, t[1] + t[3] / 2], [0.5, 0.5], atol=1e-6)  # no template jitter


def test_flip_mirrors_images_masks_and_boxes_together():
    image = marked_image(box=(150, 70, 40, 30))  # near the right edge: the search crop is padded on one side
    box = (150, 70, 40, 30)
    plain = PairProcessing(flip=0.0, grayscale=0.0, brightness=0.0)
    flipped = PairProcessing(flip=1.0, grayscale=0.0, brightness=0.0)
    a = plain(image, box, image, box, np.random.default_rng(3))
    b = flipped(image, box, image, box, np.random.default_rng(3))
    assert b["flipped"] and not a["flipped"]
    for key in ("template", "search"):
        torch.testing.assert_close(b[key], a[key].flip(-1))
        assert torch.equal(b[f"{key}_mask"], a[f"{key}_mask"].flip(-1))
        x, y, w, h = a[f"{key}_box"].tolist()
        torch.testing.assert_close(b[f"{key}_box"], torch.tensor([1 - x - w, y, w, h]))
    # the flipped box still covers the red target in the flipped search crop
    size = 320
    x, y, w, h = (b["search_box"] * size).tolist()
    red = b["search"][0] > b["search"][1] + 2  # normalised red channel far above green
    inside = red[int(y + 2):int(y + h - 2), int(x + 2):int(x + w - 2)]
    assert inside.float().mean() > 0.95
    assert b["search_mask"].any()


def test_grayscale_brightness_and_normalisation():
    image = marked_image()
    box = (80, 40, 40, 20)
    gray = PairProcessing(grayscale=1.0, flip=0.0, brightness=0.0)(image, box, image, box, np.random.default_rng(0))
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    raw = gray["search"] * std + mean
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)
    # brightness gains stay within 1 +- 0.2: a mid-grey pixel moves by at most 20 %
    processing = PairProcessing(grayscale=0.0, flip=0.0, brightness=0.2)
    flat = Image.fromarray(np.full((120, 200, 3), 100, np.uint8))
    values = []
    for seed in range(30):
        s = processing(flat, box, flat, box, np.random.default_rng(seed))
        values.append(float((s["template"] * std + mean)[0, 64, 64]) * 255 / 100)
    assert 0.8 - 1e-4 <= min(values) < 0.9 and 1.1 < max(values) <= 1.2 + 1e-4


def test_search_jitter_matches_stark_statistics():
    rng = np.random.default_rng(0)
    box = (100, 100, 40, 40)
    offsets = []
    for _ in range(4000):
        cx, cy, side = crop_region(box, 5.0, 0.5, 4.5, rng)
        offsets.append((cx - 120, cy - 120, side))
    offsets = np.array(offsets)
    # side = ceil(5 sqrt(w' h')), w', h' = 40 exp(0.5 N): log side ~ log 200 + N(0, 0.5 / sqrt 2)
    log_side = np.log(offsets[:, 2] / 200)
    assert abs(log_side.mean()) < 0.03 and abs(log_side.std() - 0.5 / math.sqrt(2)) < 0.03
    # the centre moves at most 4.5 / 2 of the jittered size, i.e. less than half the crop side
    assert (np.abs(offsets[:, :2]) <= 0.45 * offsets[:, 2:3] + 1e-9).all()
