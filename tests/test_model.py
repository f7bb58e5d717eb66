import json
import subprocess
import sys
from functools import partial

import pytest
import torch
from hydra.utils import instantiate

from heads import BLOCKS, CornerHead, reparameterize
from heads.profile import count_params
from tracker.checkpoint import CheckpointError, load_official_checkpoint, load_trunk, official_names, save_checkpoint
from tracker.config import CONF_DIR, compose
from tracker.model import StarkLightning

ROOT = CONF_DIR.parent
SMALL = ["model.template_size=32", "model.search_size=64"]


def _inputs(batch=2, z=32, x=64):
    zm = torch.zeros(batch, z, z, dtype=torch.bool)
    xm = torch.zeros(batch, x, x, dtype=torch.bool)
    xm[:, :, 40:] = True  # padding on the right of the search crop (nearest-downsampled: last feature column)
    return torch.randn(batch, 3, z, z), zm, torch.randn(batch, 3, x, x), xm


def _randomise_bn(module):
    for m in module.modules():
        if hasattr(m, "running_var") and hasattr(m, "weight") and m.weight is not None:
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)


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


def test_official_names_follow_the_published_module_names():
    names = official_names(StarkLightning(partial(CornerHead), template_size=32, search_size=64))
    official = set(names.values())
    for key in ["backbone.body.stage0.rbr_dense.conv.weight", "backbone.body.stage0.rbr_1x1.bn.running_var",
                "backbone.body.stage3.3.rbr_identity.weight", "bottleneck.weight", "pos_emb_z0.row_embed.weight",
                "pos_emb_x.col_embed.weight", "transformer.encoder.layers.0.self_attn.in_proj_weight",
                "transformer.encoder.layers.0.self_attn.out_proj.bias", "transformer.encoder.layers.0.linear1.weight",
                "transformer.encoder.layers.0.norm2.bias", "box_head.conv_tower.0.rbr_dense.conv.weight",
                "box_head.conv_tower.1.rbr_identity.running_mean", "box_head.conv_tower.2.weight"]:
        assert key in official, key


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


def test_loader_refuses_pickled_objects(tmp_path):
    path = tmp_path / "pickled.pth.tar"
    torch.save({"net": {}, "settings": _Settings()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_official_checkpoint(StarkLightning(partial(CornerHead), template_size=32, search_size=64), path)


class _Settings:
    pass


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
def test_profile_cli_prints_spec_figures(head, expected):
    out = subprocess.run([sys.executable, "-m", "heads.profile", f"head={head}", "output=json", "latency.repeats=3",
                          "latency.warmup=1", "device=cpu"], cwd=ROOT, capture_output=True, text=True, check=True)
    profile = json.loads(out.stdout.strip().splitlines()[-1])
    assert {k: profile[k] for k in expected} == expected
    assert 1.40e9 < profile["model_macs"] < 1.60e9
    assert "aten::scaled_dot_product_attention" not in profile["unsupported_ops"]
    assert profile["head_latency_ms"] > 0 and profile["model_latency_ms"] > 0
