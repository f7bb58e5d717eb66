"""RepVGG-A0 cut after stage3 (total stride 16), with frozen BatchNorm as STARK-Lightning trains it."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from heads.layers import RepVGGBlock


class RepVGGBackbone(nn.Module):
    """Stages 0-3 of RepVGG; each stage opens with a stride-2 block. Defaults are A0's first stages
    with stage3 cut to 4 blocks: 1, 2, 4, 4 blocks of width 48, 48, 96, 192."""

    def __init__(self, depths: Sequence[int] = (1, 2, 4, 4), widths: Sequence[int] = (48, 48, 96, 192),
                 in_channels: int = 3, frozen_bn: bool = True):
        super().__init__()
        if len(depths) != 4 or len(widths) != 4:
            raise ValueError(f"backbone depths={list(depths)} and widths={list(widths)} need 4 entries each "
                             "(stage0..stage3)")
        from torchvision.ops.misc import FrozenBatchNorm2d  # here: importing torchvision costs 1.7 s (torch._dynamo)

        norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        stages, width = [], in_channels
        for depth, out in zip(depths, widths):
            blocks = [RepVGGBlock(width if i == 0 else out, out, stride=2 if i == 0 else 1, norm_layer=norm)
                      for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            width = out
        self.stage0, self.stage1, self.stage2, self.stage3 = stages
        self.out_channels = width
        self.stride = 2 ** len(stages)  # each stage opens with a stride-2 block (tracker.config.STRIDE: 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(self.stage0(x))))
