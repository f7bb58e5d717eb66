"""STARK-Lightning: RepVGG trunk, 1x1 bottleneck, learned positions, one lite encoder layer, a corner head."""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..config import STRIDE
from .backbone import RepVGGBackbone
from .transformer import LearnedPositionEmbedding, LiteEncoderLayer

TRUNK_PREFIXES = ("backbone.", "bottleneck.", "template_pos.", "search_pos.", "encoder.")


class TemplateMemory(NamedTuple):
    """Template tokens computed once per sequence and reused for every frame."""

    tokens: torch.Tensor  # (B, Lz, C)
    pos: torch.Tensor  # (B, Lz, C)
    mask: torch.Tensor  # (B, Lz) True where padding


class StarkLightning(nn.Module):
    """The tracker network. `head` is a module or a factory `head(in_channels=, feat_size=, stride=)`
    (what Hydra's `_partial_` head config instantiates to)."""

    def __init__(self, head: Callable[..., nn.Module] | nn.Module, template_size: int = 128,
                 search_size: int = 320, hidden_dim: int = 128, num_heads: int = 8, ffn_dim: int = 1024,
                 dropout: float = 0.1, backbone_depths: Sequence[int] = (1, 2, 4, 4),
                 backbone_widths: Sequence[int] = (48, 48, 96, 192), frozen_bn: bool = True):
        super().__init__()
        self.backbone = RepVGGBackbone(backbone_depths, backbone_widths, frozen_bn=frozen_bn)
        stride = self.backbone.stride
        for field, size in (("template_size", template_size), ("search_size", search_size)):
            if size < stride or size % stride:
                raise ValueError(f"model.{field}={size} is not allowed: a positive multiple of the stride {stride}")
        self.template_size, self.search_size, self.stride = template_size, search_size, stride
        self.template_feat, self.search_feat = template_size // stride, search_size // stride
        self.bottleneck = nn.Conv2d(self.backbone.out_channels, hidden_dim, 1)
        self.template_pos = LearnedPositionEmbedding(self.template_feat, hidden_dim // 2)
        self.search_pos = LearnedPositionEmbedding(self.search_feat, hidden_dim // 2)
        self.encoder = LiteEncoderLayer(hidden_dim, num_heads, ffn_dim, dropout)
        if not isinstance(head, nn.Module):
            head = head(**self.head_geometry(hidden_dim, search_size, stride))
        self.head = head

    @staticmethod
    def head_geometry(hidden_dim: int, search_size: int, stride: int = STRIDE) -> dict[str, int]:
        """What a head factory is called with: the encoder's width and the search feature map's side. The one
        owner of that geometry (search.cost builds a candidate's head alone from it, before training)."""
        return {"in_channels": hidden_dim, "feat_size": search_size // stride, "stride": stride}

    def _embed(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.bottleneck(self.backbone(image))
        mask = F.interpolate(mask[:, None].float(), size=feat.shape[-2:]).bool().flatten(1)
        return feat.flatten(2).transpose(1, 2), mask

    def encode_template(self, image: torch.Tensor, mask: torch.Tensor) -> TemplateMemory:
        """(B, 3, Ht, Wt) normalised image, (B, Ht, Wt) padding mask -> cached template tokens."""
        tokens, mask = self._embed(image, mask)
        return TemplateMemory(tokens, self.template_pos().expand(tokens.shape[0], -1, -1), mask)

    def search_features(self, image: torch.Tensor, mask: torch.Tensor, template: TemplateMemory) -> torch.Tensor:
        """The head's input: encoder output for the search tokens as a (B, C, h, w) map."""
        tokens, search_mask = self._embed(image, mask)
        pos = self.search_pos().expand(tokens.shape[0], -1, -1)
        memory = torch.cat((template.tokens, tokens), dim=1)
        memory_pos = torch.cat((template.pos, pos), dim=1)
        memory_mask = torch.cat((template.mask, search_mask), dim=1)
        out = self.encoder(tokens, pos, memory, memory_pos, memory_mask)
        return out.transpose(1, 2).unflatten(2, (self.search_feat, self.search_feat))

    def predict(self, features: torch.Tensor, return_maps: bool = False) -> dict[str, torch.Tensor]:
        """Head on (B, C, h, w) features: `corners` normalised (x1, y1, x2, y2), `boxes` normalised
        (cx, cy, w, h), and with `return_maps` the corner probability maps `maps` (B, 2, h, w)."""
        result = self.head(features, return_maps=True) if return_maps else self.head(features)
        corners, maps = result if return_maps else (result, None)
        from torchvision.ops import box_convert  # here: a sweep costing heads imports no torchvision (1.7 s)

        out = {"corners": corners, "boxes": box_convert(corners, "xyxy", "cxcywh")}
        if maps is not None:
            out["maps"] = maps
        return out

    def track(self, image: torch.Tensor, mask: torch.Tensor, template: TemplateMemory,
              return_maps: bool = False) -> dict[str, torch.Tensor]:
        """Search branch: (B, 3, Hs, Ws) crop and (B, Hs, Ws) padding mask against cached template tokens."""
        return self.predict(self.search_features(image, mask, template), return_maps)

    def forward(self, template_image, template_mask, search_image, search_mask, return_maps: bool = False):
        return self.track(search_image, search_mask, self.encode_template(template_image, template_mask),
                          return_maps=return_maps)

    def trunk_parameters(self):
        return (p for n, p in self.named_parameters() if n.startswith(TRUNK_PREFIXES))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
