import copy

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

from heads import BLOCKS, CornerHead, HeadSpecError, RepVGGBlock, SoftArgmax2d, build_block, register_block, \
    reparameterize
from heads.cost import count_macs, count_params, deploy_copy, profile_head
from tracker.config import compose


def _randomise_bn(module: nn.Module) -> None:
    """Non-trivial BN statistics so the fusion test can fail."""
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _head(preset: str, *overrides: str) -> nn.Module:
    from hydra.utils import instantiate

    cfg = compose("profile", [f"head={preset}", *overrides])
    return instantiate(cfg.head)(in_channels=128, feat_size=20)


def test_baseline_head_counts_match_spec():
    head = _head("repvgg")
    assert count_params(head) == 331_522
    deployed = deploy_copy(head)
    assert count_params(deployed) == 297_474
    macs, _, _ = count_macs(deployed, (torch.zeros(1, 128, 20, 20),))
    assert macs == 118_886_400


def test_user_dsconv_head_counts_match_spec():
    head = _head("dsconv")
    assert count_params(head) == 14_466
    assert profile_head(head, 128, 20)["head_macs"] == 5_657_600


def test_dsconv_variants_scale_with_block_count():
    params = [count_params(_head("dsconv", f"head.num_blocks={n}")) for n in range(2, 7)]
    # each extra 64-wide block adds a 3x3 depthwise (576 + 64) and a 1x1 pointwise (4096 + 64)
    assert [b - a for a, b in zip(params, params[1:])] == [4_800] * 4


@torch.no_grad()
@pytest.mark.parametrize("kernel", [3, 5])
def test_repvgg_reparameterisation_keeps_outputs(kernel):
    head = CornerHead(16, 8, block="repvgg", channels=[16, 24, 24], num_blocks=3, kernel_size=kernel).eval()
    _randomise_bn(head)
    x = torch.randn(3, 16, 8, 8)
    before_corners, before_maps = head(x, return_maps=True)
    reparameterize(head)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    after_corners, after_maps = head(x, return_maps=True)
    assert (before_corners - after_corners).abs().max() < 1e-4
    assert (before_maps - after_maps).abs().max() < 1e-4


@torch.no_grad()
@pytest.mark.parametrize("block", ["dsconv", "mbconv"])
def test_normed_blocks_fold_their_bn_for_deployment(block):
    head = CornerHead(16, 8, block=block, channels=[16, 24, 24], num_blocks=3, kernel_size=5, norm=True).eval()
    _randomise_bn(head)
    x = torch.randn(3, 16, 8, 8)
    before = head(x)
    reparameterize(head)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    assert (before - head(x)).abs().max() < 1e-4
    # deployed, a BN head costs what the same head without BN (convs with biases) costs
    plain = CornerHead(16, 8, block=block, channels=[16, 24, 24], num_blocks=3, kernel_size=5, norm=False)
    assert count_params(head) == count_params(plain)
    assert profile_head(head, 16, 8)["head_macs"] == profile_head(plain, 16, 8)["head_macs"]


def test_soft_argmax_on_a_known_score_map():
    decode = SoftArgmax2d(feat_size=4, stride=16)
    scores = torch.full((1, 4, 4), -1e4)
    scores[0, 2, 1] = 10.0  # row 2 (y), column 1 (x): cell centre (1.5 * 16, 2.5 * 16) / 64
    x, y, prob = decode(scores)
    assert torch.allclose(x, torch.tensor([24 / 64])) and torch.allclose(y, torch.tensor([40 / 64]))
    assert prob.shape == (1, 16) and torch.allclose(prob.sum(1), torch.ones(1))
    x, y, _ = decode(torch.zeros(1, 4, 4))  # uniform scores: the centre of the map
    assert torch.allclose(torch.stack((x, y)), torch.full((2, 1), 0.5))


def test_soft_argmax_grid_matches_spec():
    decode = SoftArgmax2d(feat_size=20, stride=16)
    assert torch.allclose(decode.coord_x[:3] * 320, torch.tensor([8.0, 24.0, 40.0]))
    assert decode.coord_x[19] * 320 == pytest.approx(312.0)
    assert "coord_x" not in decode.state_dict()  # grid travels with .to(), not in checkpoints


def test_corner_head_returns_maps_and_moves_with_to():
    head = CornerHead(8, 5, block="dsconv", channels=8, activation="hardswish")
    corners, maps = head(torch.randn(2, 8, 5, 5), return_maps=True)
    assert corners.shape == (2, 4) and maps.shape == (2, 2, 5, 5)
    assert torch.allclose(maps.sum((2, 3)), torch.ones(2, 2))
    head.to(torch.float64)
    assert head.decode.coord_x.dtype == torch.float64


@pytest.mark.parametrize("block", sorted(BLOCKS))
@pytest.mark.parametrize("activation", ["relu", "relu6", "hardswish", "silu", "gelu", "leaky_relu"])
def test_every_block_and_activation_builds_and_keeps_size(block, activation):
    head = CornerHead(16, 6, block=block, num_blocks=2, channels=[8, 12], activation=activation, kernel_size=5)
    assert head.score_maps(torch.randn(1, 16, 6, 6)).shape == (1, 2, 6, 6)


def test_mbconv_residual_only_when_shapes_match():
    same = build_block("mbconv", 8, 8, expansion=2)
    changed = build_block("mbconv", 8, 16, expansion=2)
    assert same.residual and not changed.residual
    same.eval()
    nn.init.zeros_(same.project_norm.weight)
    nn.init.zeros_(same.project_norm.bias)
    x = torch.randn(1, 8, 4, 4)
    assert torch.allclose(same(x), x)  # zero branch: the block is the identity


def test_adding_a_block_type_is_one_class(monkeypatch):
    monkeypatch.setattr("heads.blocks.BLOCKS", dict(BLOCKS))

    @register_block("plain")
    class PlainConvBlock(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size=3):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

        def forward(self, x):
            return self.conv(x)

    block = build_block("plain", 4, 6, kernel_size=3)
    assert isinstance(block, PlainConvBlock)
    # an option the block does not take is refused, not dropped (issue 10)
    with pytest.raises(ValueError, match=r"block 'plain' does not take activation='relu', expansion=2; "
                                         r"it takes: kernel_size"):
        build_block("plain", 4, 6, kernel_size=3, activation="relu", expansion=2)


@pytest.mark.parametrize("override,field,value", [
    ("head.kernel_size=4", "head.kernel_size", "4"),
    ("head.channels=0", "head.channels", "0"),
    ("head.num_blocks=0", "head.num_blocks", "0"),
    ("head.num_blocks=9", "head.num_blocks", "9"),
    ("head.channels=[64,64,64]", "head.channels", "[64, 64, 64]"),
    ("head.final_kernel_size=2", "head.final_kernel_size", "2"),
])
def test_bad_numbers_fail_at_composition_naming_field_and_value(override, field, value):
    with pytest.raises(HeadSpecError) as err:
        compose("profile", ["head=dsconv", override])
    message = str(err.value)
    assert field in message and value in message and "allowed" in message


def test_unknown_activation_fails_at_composition_listing_choices():
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose("profile", ["head=dsconv", "head.activation=relu7"])
    message = str(err.value) + str(err.value.__cause__)
    assert "relu7" in message and "relu6" in message and "activation" in message


def test_unknown_block_fails_at_composition():
    with pytest.raises(HeadSpecError) as err:
        compose("profile", ["head.block=transformer"])
    message = str(err.value)
    assert "head.block='transformer'" in message and "['dsconv', 'mbconv', 'repvgg']" in message


def test_width_list_one_per_block():
    head = _head("dsconv", "head.num_blocks=3", "head.channels=[96,64,32]")
    assert [b.pointwise.out_channels for b in head.blocks] == [96, 64, 32]
    assert head.predictor.in_channels == 32


# ---------------------------------------------------------------------------------------- issue 10 (code review)
@pytest.mark.parametrize("preset,option,value,takers", [
    ("repvgg", "norm", False, "dsconv, mbconv"),  # RepVGG blocks always have BN: `norm=false` did nothing
    ("dsconv", "expansion", 6, "mbconv"),  # only inverted residuals expand
    ("repvgg", "expansion", 2, "mbconv"),
])
def test_an_option_the_block_does_not_take_fails_at_composition(preset, option, value, takers):
    with pytest.raises(HeadSpecError) as err:
        compose("profile", [f"head={preset}", f"head.{option}={str(value).lower()}"])
    message = str(err.value)
    assert f"head.{option}={value!r}" in message and f"head.block='{preset}'" in message and takers in message
    with pytest.raises(HeadSpecError, match=f"head.{option}={value!r}"):  # the head itself refuses it too
        CornerHead(8, 4, block=preset, **{option: value})


def test_the_same_head_composes_to_the_same_config_whatever_neutral_options_say():
    """The sweeper settles duplicates by hashing the composed config, so an option a block does not take may
    only hold its default (what a config that never mentions it composes to): the hash cannot tell them apart."""
    from hydra_plugins.lighttrack_sweeper._recipe import config_key

    for preset, neutral in (("repvgg", ["head.norm=true", "head.expansion=4"]), ("dsconv", ["head.expansion=4"])):
        plain_cfg, spelled = compose("profile", [f"head={preset}"]), compose("profile", [f"head={preset}", *neutral])
        assert config_key(plain_cfg) == config_key(spelled)


def test_a_block_registered_after_import_validates_composes_and_builds(monkeypatch):
    from hydra.utils import instantiate

    from heads import HeadSpec, validate_head

    monkeypatch.setattr("heads.blocks.BLOCKS", dict(BLOCKS))

    @register_block("mytest")
    class MyTestBlock(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size=3, activation="relu"):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

        def forward(self, x):
            return self.conv(x)

    spec = HeadSpec(block="mytest", num_blocks=2, channels=8, kernel_size=5)
    head = instantiate(OmegaConf.structured(spec))(in_channels=4, feat_size=6)
    assert [type(b) for b in head.blocks] == [MyTestBlock] * 2
    assert head.score_maps(torch.randn(1, 4, 6, 6)).shape == (1, 2, 6, 6)
    cfg = compose("profile", ["head.block=mytest", "head.kernel_size=5"])  # the repvgg preset, another block
    assert validate_head(cfg.head).block == "mytest"
    assert [type(b) for b in instantiate(cfg.head)(in_channels=4, feat_size=6).blocks] == [MyTestBlock] * 2
    with pytest.raises(HeadSpecError, match=r"head.norm=False .*dsconv, mbconv"):  # it takes no norm
        HeadSpec(block="mytest", norm=False)
    with pytest.raises(HeadSpecError, match=r"head.block='nope' .*'mytest'"):  # the error lists it
        HeadSpec(block="nope")


@torch.no_grad()
@pytest.mark.parametrize("block", ["dsconv", "mbconv"])
def test_bn_folding_is_torchs_fuse_conv_bn(block):
    """Deployed convs are exactly what torch.nn.utils.fusion computes from the trained conv and BN."""
    trained = build_block(block, 8, 12, kernel_size=5, norm=True).eval()
    _randomise_bn(trained)
    expected = {name: fuse_conv_bn_eval(getattr(trained, name), getattr(trained, norm))
                for name, norm in type(trained).conv_norms}
    deployed = reparameterize(copy.deepcopy(trained))
    for name, conv in expected.items():
        assert torch.equal(getattr(deployed, name).weight, conv.weight)
        assert torch.equal(getattr(deployed, name).bias, conv.bias)


@torch.no_grad()
@pytest.mark.parametrize("norm_layer", [nn.BatchNorm2d, FrozenBatchNorm2d])  # the backbone's blocks: frozen BN
def test_repvgg_fusion_is_torchs_fuse_conv_bn_plus_padding_and_identity(norm_layer):
    block = RepVGGBlock(8, 8, kernel_size=3, norm_layer=norm_layer).eval()
    _randomise_bn(block)
    x = torch.randn(2, 8, 6, 6)
    before = block(x)
    branches = [(block.dense.conv.weight, block.dense.bn), (block.pointwise.conv.weight, block.pointwise.bn)]
    eye = torch.zeros_like(block.dense.conv.weight)
    eye[torch.arange(8), torch.arange(8), 1, 1] = 1.0
    branches.append((eye, block.identity))
    fused = [fuse_conv_bn_weights(w, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
             for w, bn in branches]
    kernel = fused[0][0] + F.pad(fused[1][0], [1, 1, 1, 1]) + fused[2][0]
    bias = fused[0][1] + fused[1][1] + fused[2][1]
    block.reparameterize()
    assert torch.equal(block.fused.weight, kernel) and torch.equal(block.fused.bias, bias)
    assert (block(x) - before).abs().max() < 1e-5
    assert block.dense is None and block.pointwise is None and block.identity is None


def test_blocks_keep_the_attribute_names_checkpoints_and_deployment_read():
    rep, ds = RepVGGBlock(8, 8), build_block("dsconv", 8, 8, norm=True)
    for name in ("dense", "pointwise", "identity", "fused", "act"):
        assert hasattr(rep, name)
    for name in ("depthwise", "depthwise_norm", "depthwise_act", "pointwise", "pointwise_act"):
        assert isinstance(getattr(ds, name), nn.Module)
    reparameterize(rep), reparameterize(ds)
    assert isinstance(rep.fused, nn.Conv2d) and rep.fused.bias is not None
    assert isinstance(ds.depthwise, nn.Conv2d) and ds.depthwise.bias is not None
    assert isinstance(ds.depthwise_norm, nn.Identity) and isinstance(ds.pointwise_norm, nn.Identity)
