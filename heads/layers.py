"""The layers heads and the backbone share: activations by name (so a head spec can say `activation: relu6`),
conv-BN, the RepVGG block (the backbone's block; `heads.blocks` registers it as the `repvgg` head block), BN
folding and `reparameterize`, which turns a model into its deploy form."""
from __future__ import annotations

import copy
from functools import partial
from typing import Any, Callable

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,  # bounded output: quantises well (the user's choice)
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": partial(nn.LeakyReLU, 0.1),
}


def plain(name: Any) -> Any:
    """A config Enum member (what a typed schema yields) as its plain value; anything else unchanged."""
    return getattr(name, "value", name)


def make_activation(name: str) -> nn.Module:
    name = plain(name)
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not known; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


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


class RepVGGBlock(nn.Module):
    """RepVGG block: kxk conv-BN + 1x1 conv-BN (+ identity BN), summed, then the activation. The backbone uses it
    at stride 2 too.

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


def reparameterize(model: nn.Module) -> nn.Module:
    """Turns every reparameterisable block of `model` (`model` itself included) into its deploy form, in place;
    returns `model`."""
    for module in list(model.modules()):
        if callable(getattr(module, "reparameterize", None)):
            module.reparameterize()
    return model
