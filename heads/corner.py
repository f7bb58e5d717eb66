"""Corner head: a tower of blocks, a predictor conv to two score maps, and soft-argmax decoding."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .blocks import build_block
from .layers import plain
from .spec import BLOCK_OPTION_DEFAULTS as DEFAULTS, block_kwargs, check_head_options


class SoftArgmax2d(nn.Module):
    """Expected (x, y) of a softmax over a score map, on the grid of cell centres (i + 0.5) * stride,
    divided by the image size: coordinates normalised to [0, 1]."""

    def __init__(self, feat_size: int, stride: int):
        super().__init__()
        self.feat_size, self.stride = feat_size, stride
        centres = (torch.arange(feat_size, dtype=torch.float32) + 0.5) * stride / (feat_size * stride)
        self.register_buffer("coord_x", centres.repeat(feat_size), persistent=False)
        self.register_buffer("coord_y", centres.repeat_interleave(feat_size), persistent=False)

    def forward(self, score_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, H, W) scores -> x (B,), y (B,), probabilities (B, H*W)."""
        prob = score_map.flatten(1).softmax(dim=1)
        return (prob * self.coord_x).sum(dim=1), (prob * self.coord_y).sum(dim=1), prob


class CornerHead(nn.Module):
    """STARK's corner predictor with a generated tower.

    Output: normalised corners (x1, y1, x2, y2) of shape (B, 4); channel 0 of the predictor is the
    top-left score map, channel 1 the bottom-right.
    """

    def __init__(self, in_channels: int, feat_size: int, stride: int = 16, *, block: Any = "repvgg",
                 num_blocks: int = 2, channels: Any = 128, activation: Any = DEFAULTS["activation"],
                 kernel_size: int = DEFAULTS["kernel_size"], final_kernel_size: int = 3,
                 expansion: int = DEFAULTS["expansion"], norm: bool = DEFAULTS["norm"]):
        super().__init__()
        widths = check_head_options(block=block, num_blocks=num_blocks, channels=channels, activation=activation,
                                    kernel_size=kernel_size, final_kernel_size=final_kernel_size,
                                    expansion=expansion, norm=norm)
        # the options this block type takes; the others were checked to hold their defaults
        options = block_kwargs(plain(block), {"kernel_size": kernel_size, "activation": activation,
                                              "expansion": expansion, "norm": norm})
        self.feat_size, self.stride = feat_size, stride
        blocks, width = [], in_channels
        for out in widths:
            blocks.append(build_block(block, width, out, **options))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.predictor = nn.Conv2d(width, 2, final_kernel_size, padding=final_kernel_size // 2)
        self.decode = SoftArgmax2d(feat_size, stride)

    def score_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, 2, H, W) corner score maps."""
        return self.predictor(self.blocks(x))

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        scores = self.score_maps(x)
        x1, y1, prob_tl = self.decode(scores[:, 0])
        x2, y2, prob_br = self.decode(scores[:, 1])
        corners = torch.stack((x1, y1, x2, y2), dim=1)
        if return_maps:
            shape = scores.shape[:1] + scores.shape[2:]
            return corners, torch.stack((prob_tl.reshape(shape), prob_br.reshape(shape)), dim=1)
        return corners
