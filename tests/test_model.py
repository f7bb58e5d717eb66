import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from heads import BLOCKS, CornerHead, reparameterize
from heads.cost import count_params
from tracker.model.checkpoint import CheckpointError, load_official_checkpoint, load_trunk, official_names, save_checkpoint
from tracker.config import CONF_DIR, compose
from tracker.model import StarkLightning

from model_helpers import randomise_bn as _randomise_bn

ROOT = CONF_DIR.parent
SMALL = ["model.template_size=32", "model.search_size=64"]


def _inputs(batch=2, z=32, x=64):
    zm = torch.zeros(batch, z, z, dtype=torch.bool)
    xm = torch.zeros(batch, x, x, dtype=torch.bool)
    xm[:, :, 40:] = True  # padding on the right of the search crop (nearest-downsampled: last feature column)
    return torch.randn(batch, 3, z, z), zm, torch.randn(batch, 3, x, x), xm


def test_parameter_counts_match_spec():
    model = StarkLightning(partial(CornerHead))
    deployed = reparameterize(model.eval())
    assert count_params(deployed) == 2_151_202
    assert count_params(deployed.backbone) == 1_495_584
    assert count_params(deployed.encoder) == 329_856
    assert count_params(deployed.bottleneck) == 24_704
    assert count_params(deployed.template_pos) + count_params(deployed.search_pos) == 3_584


@pytest.mark.parametrize("head", sorted(BLOCKS))
def test_forward_on_cpu_at_small_sizes_for_each_block_type(head):
    cfg = compose("profile", [f"head={head}", *SMALL])
    model = instantiate(cfg.model)
    out = model(*_inputs(), return_maps=True)
    assert out["boxes"].shape == (2, 4) and out["corners"].shape == (2, 4)
    assert out["maps"].shape == (2, 2, 4, 4)
    assert ((out["corners"] >= 0) & (out["corners"] <= 1)).all()
    out["boxes"].sum().backward()
    assert model.head.predictor.weight.grad is not None


@torch.no_grad()
def test_cached_template_gives_the_same_result_as_a_full_forward():
    model = instantiate(compose("profile", SMALL).model).eval()
    z, zm, x, xm = _inputs()
    template = model.encode_template(z, zm)
    assert torch.allclose(model.track(x, xm, template)["boxes"], model(z, zm, x, xm)["boxes"])


@torch.no_grad()
def test_padding_mask_changes_attention():
    model = instantiate(compose("profile", SMALL).model).eval()
    z, zm, x, xm = _inputs()
    masked = model(z, zm, x, xm)["boxes"]
    unmasked = model(z, zm, x, torch.zeros_like(xm))["boxes"]
    assert not torch.allclose(masked, unmasked)


@torch.no_grad()
def test_whole_model_reparameterisation_keeps_outputs():
    model = instantiate(compose("profile", SMALL).model).eval()
    _randomise_bn(model)
    inputs = _inputs()
    before = model(*inputs, return_maps=True)
    reparameterize(model)
    after = model(*inputs, return_maps=True)
    assert (before["corners"] - after["corners"]).abs().max() < 1e-4
    assert (before["maps"] - after["maps"]).abs().max() < 1e-4


def test_model_size_must_be_a_multiple_of_the_stride():
    with pytest.raises(ValueError, match=r"model.search_size=100 .*multiple of 16"):
        compose("profile", ["model.search_size=100"])


def _official_checkpoint(model: StarkLightning) -> dict:
    """What the official file holds: the trained (not reparameterised) model under `net`."""
    return {"net": {theirs: model.state_dict()[ours] for ours, theirs in official_names(model).items()},
            "epoch": 500}


FIXTURES = Path(__file__).parent / "fixtures"


def _official_key_shapes() -> dict[str, tuple[int, ...]]:
    """STARK-Lightning's real `net` keys and shapes, copied from researchmm/Stark's module layout."""
    rows = [line.split() for line in (FIXTURES / "stark_lightning_x_trt_keys.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    return {key: () if shape == "scalar" else tuple(int(d) for d in shape.split("x")) for key, shape in rows}


def test_official_names_are_stark_lightnings_real_keys():
    official = {k: v for k, v in _official_key_shapes().items() if not k.endswith("num_batches_tracked")}
    model = StarkLightning(partial(CornerHead))
    names = official_names(model)
    assert set(names.values()) == set(official)
    state = model.state_dict()
    assert {theirs: tuple(state[ours].shape) for ours, theirs in names.items()} == official
    assert not any(".layers.0." in key for key in names.values())  # STARK-S/ST's level, not Lightning's


def test_checkpoint_with_the_official_key_list_loads_with_no_missing_or_unexpected_key(tmp_path):
    generator = torch.Generator().manual_seed(0)
    net = {key: (torch.tensor(7) if not shape else torch.rand(shape, generator=generator) + 0.5)
           for key, shape in _official_key_shapes().items()}
    path = tmp_path / "STARK_Lightning_X_trt_ep0500.pth.tar"
    torch.save({"net": net, "epoch": 500}, path)
    model = StarkLightning(partial(CornerHead))
    load_official_checkpoint(model, path)  # raises on any missing, unexpected or mis-shaped key
    assert torch.equal(model.encoder.self_attn.in_proj.weight, net["transformer.encoder.self_attn.in_proj_weight"])
    assert torch.equal(model.encoder.norm2.bias, net["transformer.encoder.norm2.bias"])
    assert torch.equal(model.search_pos.row_embed.weight, net["pos_emb_x.row_embed.weight"])
    assert torch.equal(model.head.predictor.weight, net["box_head.conv_tower.2.weight"])


class _StarkEncoderLayer(torch.nn.Module):
    """The encoder layer as SPEC.md states it and STARK computes it: sequence-first tokens,
    torch.nn.MultiheadAttention, q = search + pos, x = norm1(q + attn(q, k, v)), x = norm2(x + FFN(x))."""

    def __init__(self, dim=128, heads=8, ffn=1024):
        super().__init__()
        self.self_attn = torch.nn.MultiheadAttention(dim, heads)
        self.linear1, self.linear2 = torch.nn.Linear(dim, ffn), torch.nn.Linear(ffn, dim)
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)

    def forward(self, q, k, v, key_padding_mask):
        x = self.norm1(q + self.self_attn(q, k, v, key_padding_mask=key_padding_mask)[0])
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))


@torch.no_grad()
def test_encoder_layer_matches_starks_formulas_with_multihead_attention():
    torch.manual_seed(0)
    ours = StarkLightning(partial(CornerHead)).encoder.eval()
    for p in ours.parameters():
        p.uniform_(-0.5, 0.5)
    reference = _StarkEncoderLayer().eval()
    reference.self_attn.in_proj_weight.copy_(ours.self_attn.in_proj.weight)
    reference.self_attn.in_proj_bias.copy_(ours.self_attn.in_proj.bias)
    reference.self_attn.out_proj.load_state_dict(ours.self_attn.out_proj.state_dict())
    for name in ("linear1", "linear2", "norm1", "norm2"):
        getattr(reference, name).load_state_dict(getattr(ours, name).state_dict())
    batch, lz, lx = 3, 64, 400
    search, search_pos = torch.randn(batch, lx, 128), torch.randn(batch, lx, 128)
    template, template_pos = torch.randn(batch, lz, 128), torch.randn(batch, lz, 128)
    mask = torch.zeros(batch, lz + lx, dtype=torch.bool)
    mask[0, lz + 380:] = True  # padding at the search crop's border
    mask[1, :10] = True  # and in the template
    memory, memory_pos = torch.cat((template, search), 1), torch.cat((template_pos, search_pos), 1)
    out = ours(search, search_pos, memory, memory_pos, mask)
    seq = lambda t: t.transpose(0, 1)  # noqa: E731  STARK's tokens are (L, B, C)
    expected = reference(seq(search + search_pos), seq(memory + memory_pos), seq(memory), mask).transpose(0, 1)
    assert (out - expected).abs().max() < 1e-5


def test_official_checkpoint_round_trip(tmp_path):
    source = StarkLightning(partial(CornerHead), template_size=32, search_size=64).eval()
    _randomise_bn(source)
    path = tmp_path / "STARK_Lightning_X_trt_ep0500.pth.tar"
    torch.save(_official_checkpoint(source), path)
    target = StarkLightning(partial(CornerHead), template_size=32, search_size=64).eval()
    load_official_checkpoint(target, path)
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(source(*inputs)["boxes"], target(*inputs)["boxes"])


def test_official_trunk_under_a_new_head(tmp_path):
    source = StarkLightning(partial(CornerHead), template_size=32, search_size=64)
    path = tmp_path / "official.pth.tar"
    torch.save(_official_checkpoint(source), path)
    target = StarkLightning(partial(CornerHead, block="dsconv", channels=64, final_kernel_size=1),
                            template_size=32, search_size=64)
    load_trunk(target, path)
    assert torch.equal(target.encoder.linear1.weight, source.encoder.linear1.weight)
    assert torch.equal(target.backbone.stage2[1].dense.conv.weight, source.backbone.stage2[1].dense.conv.weight)
    with pytest.raises(CheckpointError, match="missing"):
        load_official_checkpoint(target, path)  # the dsconv head has no counterpart in the official head


def test_loader_lists_missing_and_unexpected_keys(tmp_path):
    model = StarkLightning(partial(CornerHead), template_size=32, search_size=64)
    ckpt = _official_checkpoint(model)
    del ckpt["net"]["bottleneck.weight"]
    ckpt["net"]["box_head.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth.tar"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        load_official_checkpoint(model, path)
    assert "bottleneck.weight" in str(err.value) and "box_head.extra.weight" in str(err.value)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="'net'"):
        load_official_checkpoint(model, path)


def test_own_checkpoint_trunk_round_trip(tmp_path):
    source = StarkLightning(partial(CornerHead), template_size=32, search_size=64)
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", model=source.state_dict(), step=3)
    assert not list(path.parent.glob("*.tmp"))
    target = StarkLightning(partial(CornerHead, block="mbconv", channels=16), template_size=32, search_size=64)
    load_trunk(target, path)
    assert torch.equal(target.bottleneck.weight, source.bottleneck.weight)


@pytest.mark.parametrize("head,expected", [
    ("repvgg", {"head_params": 331_522, "head_params_deploy": 297_474, "head_macs": 118_886_400,
                "model_params_deploy": 2_151_202}),
    ("dsconv", {"head_params": 14_466, "head_params_deploy": 14_466, "head_macs": 5_657_600}),
])
def test_profile_cli_prints_spec_figures(head, expected, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tracker.profile", f"head={head}", "output=json", "latency=quick",
                          "device=cpu", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "LIGHTTRACK_RUNS": str(tmp_path / "runs")})
    profile = json.loads(out.stdout.strip().splitlines()[-1])
    assert {k: profile[k] for k in expected} == expected
    assert 1.40e9 < profile["model_macs"] < 1.60e9
    assert "aten::scaled_dot_product_attention" not in profile["unsupported_ops"]
    assert 0 < profile["head_latency_ms"] < profile["frame_latency_ms"] and profile["latency_runtime"] == "torch"
    assert list((tmp_path / "runs" / "latency").glob("*.json"))  # measured once, kept for the next ask


def test_a_trunk_from_other_crop_sizes_is_refused_with_the_sizes_to_set(tmp_path):
    path = tmp_path / "official.pth.tar"
    torch.save(_official_checkpoint(StarkLightning(partial(CornerHead), template_size=32, search_size=64)), path)
    with pytest.raises(CheckpointError, match=r"set trainer.template_size=32 trainer.search_size=64"):
        load_trunk(StarkLightning(partial(CornerHead), template_size=64, search_size=128), path)


def test_the_backbone_stride_is_the_one_validation_checks():
    from tracker.config import STRIDE
    from tracker.model.backbone import RepVGGBackbone

    assert RepVGGBackbone(frozen_bn=False).stride == STRIDE
    model = StarkLightning(partial(CornerHead), template_size=32, search_size=64)
    assert model.stride == STRIDE and model.search_feat == StarkLightning.head_geometry(128, 64)["feat_size"] == 4


def test_an_empty_or_truncated_checkpoint_is_named_as_such(tmp_path):
    from tracker.model.checkpoint import read_checkpoint

    model = StarkLightning(partial(CornerHead, block="dsconv", channels=16), template_size=32, search_size=64)
    whole = tmp_path / "whole.pt"
    torch.save({"model": model.state_dict()}, whole)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\): it was not written completely"):
        read_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"truncated or corrupt .*zip directory missing"):
        read_checkpoint(tmp_path / "cut.pt")
    assert set(read_checkpoint(whole)) == {"model"}
