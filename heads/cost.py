"""What a head costs before it trains: parameters and MACs with fvcore, on the deploy form (RepVGG blocks
reparameterised, BN folded). A sweep prices each candidate head with `profile_head`; the whole tracker's profile,
latency included, and its CLI are `tracker.profile` (`python -m tracker.profile`).

MACs count one multiply-add as one (fvcore's convention; FLOPs = 2 x MACs).
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from torch import nn

from .layers import reparameterize

# fvcore's import scripts a helper with torch.jit.script, which new torch flags as deprecated; harmless here
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """q @ k^T and attn @ v: 2 * B * heads * Lq * Lk * d multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    return 2 * math.prod(q[:-1]) * k[-2] * q[-1]


def count_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int, dict[str, int], dict[str, int]]:
    """Total MACs, MACs by submodule, and the ops fvcore skipped (name -> count)."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    total = int(analysis.total())
    return total, dict(analysis.by_module()), dict(analysis.unsupported_ops())


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def deploy_copy(module: nn.Module) -> nn.Module:
    """A reparameterised eval-mode copy; the original is untouched."""
    return reparameterize(copy.deepcopy(module).eval())


def profile_head(head: nn.Module, in_channels: int, feat_size: int) -> dict[str, Any]:
    """Cheap cost figures of a head alone (no latency): what a sweep knows before training."""
    deployed = deploy_copy(head)
    x = torch.zeros(1, in_channels, feat_size, feat_size, device=next(head.parameters()).device)
    macs, _, unsupported = count_macs(deployed, (x,))
    return {"head_params": count_params(head), "head_params_deploy": count_params(deployed), "head_macs": macs,
            "head_unsupported_ops": unsupported}
