"""The deployed tracker and the benchmark's STARK reference compute the eager model's boxes (within 1e-4)."""
import copy
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from heads import CornerHead, reparameterize
from model_helpers import randomise_bn as _randomise_bn
from tracker.deploy import DeployedTracker, WinogradConvAct
from tracker.evaluation import StarkTracker
from tracker.model import StarkLightning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stark_reference import build_stark_reference  # noqa: E402

HEADS = {
    "repvgg": partial(CornerHead),
    "dsconv": partial(CornerHead, block="dsconv", channels=64, activation="relu6", final_kernel_size=1, norm=True),
}
SHARPEN = {"repvgg": 20.0, "dsconv": 300.0}  # predictor scale that spreads random models' boxes over the crop


def _model(head: str, template_size: int = 64, search_size: int = 128) -> StarkLightning:
    """Random weights, non-trivial BN statistics, and a predictor scaled up so the corner maps are peaked and
    the boxes spread over the crop (a near-uniform map would put every box at the centre)."""
    model = StarkLightning(HEADS[head], template_size=template_size, search_size=search_size).eval()
    _randomise_bn(model)
    with torch.no_grad():
        model.head.predictor.weight.mul_(SHARPEN[head])
    return model


def _inputs(model: StarkLightning, batch: int = 2, random_masks: bool = False):
    out = []
    for size in (model.template_size, model.search_size):
        image = torch.randn(batch, 3, size, size)
        if random_masks:
            mask = torch.rand(batch, size, size) < 0.3
        else:
            mask = torch.zeros(batch, size, size, dtype=torch.bool)
            mask[0, : size // 4] = True  # a target near the top border
            mask[-1, :, size - size // 3:] = True  # near the right border
        out += [image, mask]
    return out


def _eager(model: StarkLightning, z, zm, x, xm) -> dict:
    with torch.no_grad():
        return model.track(x, xm, model.encode_template(z, zm))


def _assert_same_boxes(out: dict, expected: dict, tol: float = 1e-4) -> None:
    for key in ("boxes", "corners"):
        assert out[key].shape == expected[key].shape
        assert (out[key] - expected[key]).abs().max().item() <= tol, key
    assert (expected["boxes"][:, :2] - 0.5).abs().max() > 0.02  # not the centre of a flat map: the test has teeth


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("channels_last", [True, False])
def test_deployed_tracker_gives_the_eager_models_boxes(head, channels_last):
    model = _model(head)
    before = copy.deepcopy(model.state_dict())
    z, zm, x, xm = _inputs(model)
    tracker = DeployedTracker(model, channels_last=channels_last)
    out = tracker.track(x, xm, tracker.encode_template(z, zm))
    _assert_same_boxes(out, _eager(model, z, zm, x, xm))
    # the original is neither reparameterised nor changed
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_deployed_tracker_downsamples_any_mask_as_the_model_does():
    model = _model("repvgg", 32, 64)
    z, zm, x, xm = _inputs(model, batch=3, random_masks=True)
    tracker = DeployedTracker(model)
    _assert_same_boxes(tracker.track(x, xm, tracker.encode_template(z, zm)), _eager(model, z, zm, x, xm))


@pytest.mark.parametrize("act", [torch.nn.ReLU(), torch.nn.ReLU6(), None], ids=["relu", "relu6", "none"])
def test_winograd_conv_computes_the_direct_conv(act):
    conv = torch.nn.Conv2d(128, 64, 3, padding=1)
    layer = WinogradConvAct(conv, act)
    assert WinogradConvAct.suits(conv, act)
    for size in (6, 7):  # an odd side falls back to the direct conv
        x = 3 * torch.randn(2, 128, size, size)
        with torch.no_grad():
            expected = conv(x) if act is None else act(conv(x))
            out = layer(x.contiguous(memory_format=torch.channels_last))
        assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_deployed_tracker_rejects_an_unknown_compiler():
    with pytest.raises(ValueError, match="compile='tvm'"):
        DeployedTracker(_model("dsconv", 32, 64), compile="tvm")


@pytest.mark.parametrize("head", HEADS)
def test_stark_reference_computes_the_eager_models_boxes(head):
    """The benchmark's STARK-Lightning (STARK's way of computing: sequence-first, nn.MultiheadAttention,
    positions repeated per call) on our weights gives our boxes: the speed comparison is like for like."""
    model = _model(head)
    z, zm, x, xm = _inputs(model, batch=1)
    reference = build_stark_reference(model)
    _assert_same_boxes(reference.track(x, xm, reference.encode_template(z, zm)), _eager(model, z, zm, x, xm))
    assert isinstance(reference.transformer.self_attn, torch.nn.MultiheadAttention)


def _frames(count: int = 5, size=(120, 96)):
    """A bright textured square drifting over noise."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        pixels = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
        x0, y0 = 30 + 4 * i, 25 + 2 * i
        pixels[y0:y0 + 30, x0:x0 + 24] = rng.integers(150, 255, (30, 24, 3), dtype=np.uint8)
        frames.append(Image.fromarray(pixels))
    return frames, np.array([30.0, 25.0, 24.0, 30.0])


def test_online_tracker_gives_the_same_boxes_through_the_deployed_tracker():
    model = _model("repvgg", 32, 64)
    deployed = StarkTracker(model, torch.device("cpu"))
    assert isinstance(deployed.model, DeployedTracker)
    plain = StarkTracker(model, torch.device("cpu"))
    plain.model = reparameterize(copy.deepcopy(model).eval())  # the eager model as the tracker ran it before
    frames, box = _frames()
    deployed.initialize(frames[0], box)
    plain.initialize(frames[0], box)
    for frame in frames[1:]:
        ours, expected = deployed.update(frame), plain.update(frame)
        assert np.abs(ours - expected).max() < 1e-2  # pixels
