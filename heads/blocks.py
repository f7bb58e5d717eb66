"""Head building blocks, one class per block type, looked up by name in `BLOCKS`.

Every block maps (B, in_channels, H, W) -> (B, out_channels, H, W) at stride 1 (the backbone also uses
`RepVGGBlock` at stride 2). Adding a block type is adding one class decorated with `@register_block`.
"""
from __future__ import annotations

import copy
import inspect
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .activations import make_activation, plain

BLOCKS: dict[str, type[nn.Module]] = {}


def register_block(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in BLOCKS:
            raise ValueError(f"block {name!r} is already registered as {BLOCKS[name].__name__}")
        BLOCKS[name] = cls
        return cls

    return add


def block_options(name: str) -> frozenset[str] | None:
    """The options a registered block type's constructor takes besides its two widths (None: any, it takes
    **kwargs). What a head spec may set for that block type (`heads.spec.check_head_options`)."""
    name = plain(name)
    if name not in BLOCKS:
        raise ValueError(f"block={name!r} is not registered; choose one of {sorted(BLOCKS)}")
    parameters = list(inspect.signature(BLOCKS[name].__init__).parameters.values())[3:]  # self, in, out
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind is not p.VAR_POSITIONAL)


def build_block(name: str, in_channels: int, out_channels: int, **options) -> nn.Module:
    """Builds a registered block; an option its constructor does not take is an error, never dropped."""
    name = plain(name)
    takes = block_options(name)
    extra = {k: v for k, v in options.items() if takes is not None and k not in takes}
    if extra:
        given = ", ".join(f"{k}={v!r}" for k, v in extra.items())
        raise ValueError(f"block {name!r} does not take {given}; it takes: {', '.join(sorted(takes)) or 'nothing'}")
    return BLOCKS[name](in_channels, out_channels, **options)


class ConvNorm(nn.Sequential):
    """Conv without bias followed by a norm layer: a RepVGG branch."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = norm_layer(out_channels)


def _fold_norm(kernel: torch.Tensor, norm: nn.Module,
               bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv kernel (and optional bias) with the BN (or FrozenBatchNorm2d) after it folded in, by torch's
    `fuse_conv_bn_weights` on the running statistics: what `fuse_conv_bn_eval` computes, without its
    eval-mode assertion (reparameterising never depended on the mode) and for kernels no conv holds (RepVGG's
    padded 1x1 and identity branches)."""
    kernel, bias = fuse_conv_bn_weights(kernel, bias, norm.running_mean, norm.running_var, norm.eps,
                                        norm.weight, norm.bias)
    return kernel.detach(), bias.detach()


@register_block("repvgg")
class RepVGGBlock(nn.Module):
    """RepVGG block: kxk conv-BN + 1x1 conv-BN (+ identity BN), summed, then the activation.

    `reparameterize()` folds the branches into one kxk conv with bias (the deploy form), same outputs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 activation: str = "relu", norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.dense = ConvNorm(in_channels, out_channels, kernel_size, stride, norm_layer)
        self.pointwise = ConvNorm(in_channels, out_channels, 1, stride, norm_layer)
        self.identity = norm_layer(in_channels) if in_channels == out_channels and stride == 1 else None
        self.fused: nn.Conv2d | None = None
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        k = self.kernel_size
        kernel, bias = _fold_norm(self.dense.conv.weight, self.dense.bn)
        k1, b1 = _fold_norm(self.pointwise.conv.weight, self.pointwise.bn)
        kernel = kernel + F.pad(k1, [k // 2] * 4)  # the 1x1 branch as a kxk kernel: zero but at the centre
        bias = bias + b1
        if self.identity is not None:  # the identity as a kxk conv: one-hot at the centre, channel i -> i
            eye = torch.zeros_like(kernel)
            eye[torch.arange(self.in_channels), torch.arange(self.in_channels), k // 2, k // 2] = 1.0
            ki, bi = _fold_norm(eye, self.identity)
            kernel, bias = kernel + ki, bias + bi
        self.fused = nn.Conv2d(self.in_channels, self.out_channels, k, self.stride, k // 2, bias=True)
        self.fused.to(kernel)
        self.fused.weight.copy_(kernel)
        self.fused.bias.copy_(bias)
        self.dense, self.pointwise, self.identity = None, None, None


class FoldsNorms:
    """For blocks whose convs are each followed by an optional BN: `reparameterize()` folds every BN into its
    conv (the deploy form, same outputs), so deployed parameters and MACs count no BN. `conv_norms` names the
    (conv, norm) attribute pairs."""

    conv_norms: tuple[tuple[str, str], ...] = ()

    @torch.no_grad()
    def reparameterize(self) -> None:
        for conv_name, norm_name in self.conv_norms:
            conv, norm = getattr(self, conv_name), getattr(self, norm_name)
            if isinstance(norm, nn.Identity):
                continue
            fused = copy.deepcopy(conv)  # same geometry (stride, padding, groups, ...), now with a bias
            fused.weight, fused.bias = (nn.Parameter(t) for t in _fold_norm(conv.weight, norm, conv.bias))
            setattr(self, conv_name, fused)
            setattr(self, norm_name, nn.Identity())


@register_block("dsconv")
class DepthwiseSeparableBlock(FoldsNorms, nn.Module):
    """The user's block: depthwise kxk conv, activation, pointwise 1x1 conv, activation; optional BN after each conv."""

    conv_norms = (("depthwise", "depthwise_norm"), ("pointwise", "pointwise_norm"))

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, activation: str = "relu6",
                 norm: bool = False):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                                   groups=in_channels, bias=not norm)
        self.depthwise_norm = nn.BatchNorm2d(in_channels) if norm else nn.Identity()
        self.depthwise_act = make_activation(activation)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=not norm)
        self.pointwise_norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.pointwise_act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise_act(self.depthwise_norm(self.depthwise(x)))
        return self.pointwise_act(self.pointwise_norm(self.pointwise(x)))


@register_block("mbconv")
class InvertedResidualBlock(FoldsNorms, nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand, depthwise kxk, linear 1x1 project; residual when shapes match."""

    conv_norms = (("expand", "expand_norm"), ("depthwise", "depthwise_norm"), ("project", "project_norm"))

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, activation: str = "relu6",
                 expansion: int = 4, norm: bool = True):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = nn.Conv2d(in_channels, hidden, 1, bias=not norm)
        self.expand_norm = nn.BatchNorm2d(hidden) if norm else nn.Identity()
        self.expand_act = make_activation(activation)
        self.depthwise = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden,
                                   bias=not norm)
        self.depthwise_norm = nn.BatchNorm2d(hidden) if norm else nn.Identity()
        self.depthwise_act = make_activation(activation)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=not norm)
        self.project_norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.residual = in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand_act(self.expand_norm(self.expand(x)))
        y = self.depthwise_act(self.depthwise_norm(self.depthwise(y)))
        y = self.project_norm(self.project(y))
        return x + y if self.residual else y


def reparameterize(model: nn.Module) -> nn.Module:
    """Turns every reparameterisable block of `model` (`model` itself included) into its deploy form, in place;
    returns `model`."""
    for module in list(model.modules()):
        if callable(getattr(module, "reparameterize", None)):
            module.reparameterize()
    return model
