"""Head building blocks, one class per block type, looked up by name in `BLOCKS`.

Every block maps (B, in_channels, H, W) -> (B, out_channels, H, W) at stride 1. Adding a block type is adding one
class decorated with `@register_block("name")`, here or in any module imported before a config is composed (add
`reparameterize`, or `heads.layers.FoldsNorms`, only if it has a training-time form that folds). `repvgg` is
`heads.layers.RepVGGBlock`, the backbone's block, registered here; `dsconv` and `mbconv` are heads' own.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from .layers import FoldsNorms, RepVGGBlock, make_activation, plain

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


register_block("repvgg")(RepVGGBlock)


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
