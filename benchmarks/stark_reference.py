"""STARK-Lightning computed the way STARK's own deploy-form code computes it: the benchmark's reference.

Written from the SPEC and from reading researchmm/Stark (`stark_lightning_x_trt.py`, `lite_encoder.py`,
`Corner_Predictor_Lite_Rep_v2` in `head.py`, `PositionEmbeddingLearned_new`, `get_qkv` and the tracker
`stark_lightning_X_trt.py`); no code is copied. What makes it STARK's and not ours:

- tokens are sequence-first, (HW, B, C), and the search branch goes through `forward_backbone` (backbone,
  position embedding, mask, bottleneck, reshape) then `forward_transformer` (encoder, head);
- the position embeddings are rebuilt from their tables by `repeat` on every call, for every frame;
- `get_qkv` concatenates template and search features, masks and positions every frame;
- attention is `nn.MultiheadAttention(q, k, value=v, key_padding_mask=...)[0]`, called as STARK calls it, so it
  also computes the averaged attention weights that STARK throws away;
- the head's soft-argmax works in pixels on coordinate vectors and divides by the image size afterwards, and
  `box_xyxy_to_cxcywh` turns its corners into boxes.

Backbone and head are in deploy form (RepVGG branches folded into one conv with bias), so they are plain
conv + bias + activation sequences, exactly as STARK runs them after `repvgg_model_convert`.
`build_stark_reference(model)` builds it from one of our `StarkLightning` models so both compute on the same
weights; the original model is not modified. It runs under `torch.no_grad()`, as STARK's tracker does.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
import torch.nn.functional as F

from heads import DepthwiseSeparableBlock, RepVGGBlock, reparameterize


class PositionEmbeddingRepeat(nn.Module):
    """Learned absolute positions of a fixed size, rebuilt by `repeat` on every call: (B, C, H, W)."""

    def __init__(self, col_embed: nn.Embedding, row_embed: nn.Embedding, size: int):
        super().__init__()
        self.size, self.col_embed, self.row_embed = size, col_embed, row_embed

    def forward(self, batch: int) -> torch.Tensor:
        h = w = self.size
        cols = self.col_embed(torch.arange(w, device=self.col_embed.weight.device))
        rows = self.row_embed(torch.arange(h, device=self.row_embed.weight.device))
        pos = torch.cat([cols.unsqueeze(0).repeat(h, 1, 1), rows.unsqueeze(1).repeat(1, w, 1)], dim=-1)
        return pos.permute(2, 0, 1).unsqueeze(0).repeat(batch, 1, 1, 1)


class LiteEncoderLayerReference(nn.Module):
    """One post-norm lite encoder layer over sequence-first tokens, attention by `nn.MultiheadAttention`."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, q, k, v, key_padding_mask=None):
        # need_weights is left at its default (True), as STARK calls it: the weights are computed, then dropped
        attended = self.self_attn(q, k, value=v, key_padding_mask=key_padding_mask)[0]
        x = self.norm1(q + self.dropout1(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(ffn))


class CornerPredictorReference(nn.Module):
    """`Corner_Predictor_Lite_Rep_v2` in deploy form: a conv tower to two score maps, soft-argmax in pixels."""

    def __init__(self, conv_tower: nn.Sequential, feat_size: int, stride: int):
        super().__init__()
        self.conv_tower, self.feat_size, self.feat_len = conv_tower, feat_size, feat_size ** 2
        self.img_size = feat_size * stride
        index = (torch.arange(feat_size).view(-1, 1) + 0.5) * stride
        self.register_buffer("coord_x", index.repeat((feat_size, 1)).view(-1).float(), persistent=False)
        self.register_buffer("coord_y", index.repeat((1, feat_size)).view(-1).float(), persistent=False)

    def soft_argmax(self, score_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prob = F.softmax(score_map.reshape(-1, self.feat_len), dim=1)
        return torch.sum(self.coord_x * prob, dim=1), torch.sum(self.coord_y * prob, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score_map = self.conv_tower(x)
        x1, y1 = self.soft_argmax(score_map[:, 0, :, :])
        x2, y2 = self.soft_argmax(score_map[:, 1, :, :])
        return torch.stack((x1, y1, x2, y2), dim=1) / self.img_size


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


class StarkReference(nn.Module):
    """STARK-Lightning's deploy-form network with the tracker's two calls: `encode_template` (the template's
    `forward_backbone`, once per sequence) and `track` (the search `forward_backbone`, `get_qkv`,
    `forward_transformer`), returning `boxes` (normalised cx, cy, w, h) and `corners` like our model."""

    def __init__(self, backbone: nn.Sequential, bottleneck: nn.Conv2d, pos_emb_z: PositionEmbeddingRepeat,
                 pos_emb_x: PositionEmbeddingRepeat, transformer: LiteEncoderLayerReference,
                 box_head: CornerPredictorReference):
        super().__init__()
        self.backbone, self.bottleneck, self.transformer, self.box_head = backbone, bottleneck, transformer, box_head
        self.pos_emb_z0, self.pos_emb_x = pos_emb_z, pos_emb_x
        self.feat_len_s = box_head.feat_len
        self.feat_sz_s = box_head.feat_size

    def forward_backbone(self, img: torch.Tensor, zx: str, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(img)
        pos = (self.pos_emb_x if zx == "search" else self.pos_emb_z0)(img.size(0))
        mask_down = F.interpolate(mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]
        feat = self.bottleneck(features)
        return {"feat": feat.flatten(2).permute(2, 0, 1), "mask": mask_down.flatten(1),
                "pos": pos.flatten(2).permute(2, 0, 1)}

    @staticmethod
    def get_qkv(inputs: list[dict[str, torch.Tensor]]):
        search = inputs[-1]
        feat = torch.cat([d["feat"] for d in inputs], dim=0)
        mask = torch.cat([d["mask"] for d in inputs], dim=1)
        pos = torch.cat([d["pos"] for d in inputs], dim=0)
        return search["feat"] + search["pos"], feat + pos, feat, mask

    def forward_transformer(self, q, k, v, key_padding_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        memory = self.transformer(q, k, v, key_padding_mask=key_padding_mask)
        fx = memory[-self.feat_len_s:].permute(1, 2, 0).contiguous()
        fx = fx.view(*fx.shape[:2], self.feat_sz_s, self.feat_sz_s).contiguous()
        corners = self.box_head(fx)
        return corners, box_xyxy_to_cxcywh(corners)

    @torch.no_grad()
    def encode_template(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_backbone(image, "template0", mask)

    @torch.no_grad()
    def track(self, image: torch.Tensor, mask: torch.Tensor, template: dict[str, torch.Tensor]):
        search = self.forward_backbone(image, "search", mask)
        q, k, v, key_padding_mask = self.get_qkv([template, search])
        corners, boxes = self.forward_transformer(q, k, v, key_padding_mask)
        return {"boxes": boxes, "corners": corners}


def _plain_layers(block: nn.Module) -> list[nn.Module]:
    """A deploy-form block as the conv / activation modules it runs in sequence."""
    if isinstance(block, RepVGGBlock) and block.fused is not None:
        return [block.fused, block.act]
    if isinstance(block, DepthwiseSeparableBlock):  # its norms are folded into the convs (Identity) by now
        return [block.depthwise, block.depthwise_act, block.pointwise, block.pointwise_act]
    return [block]  # any other block type runs as itself


def build_stark_reference(model) -> StarkReference:
    """STARK's network on the weights of our `StarkLightning` (a reparameterised copy; `model` is untouched)."""
    ours = reparameterize(copy.deepcopy(model).eval())
    stages = (ours.backbone.stage0, ours.backbone.stage1, ours.backbone.stage2, ours.backbone.stage3)
    backbone = nn.Sequential(*[layer for stage in stages for block in stage for layer in _plain_layers(block)])
    tower = nn.Sequential(*[layer for block in ours.head.blocks for layer in _plain_layers(block)],
                          ours.head.predictor)
    attn = ours.encoder.self_attn
    dim = attn.out_proj.in_features
    encoder = LiteEncoderLayerReference(dim, attn.num_heads, ours.encoder.linear1.out_features, attn.dropout)
    with torch.no_grad():
        encoder.self_attn.in_proj_weight.copy_(attn.in_proj.weight)
        encoder.self_attn.in_proj_bias.copy_(attn.in_proj.bias)
        encoder.self_attn.out_proj.load_state_dict(attn.out_proj.state_dict())
    for name in ("linear1", "linear2", "norm1", "norm2"):
        getattr(encoder, name).load_state_dict(getattr(ours.encoder, name).state_dict())
    position = lambda p: PositionEmbeddingRepeat(p.col_embed, p.row_embed, p.size)  # noqa: E731
    head = CornerPredictorReference(tower, ours.search_feat, ours.stride)
    reference = StarkReference(backbone, ours.bottleneck, position(ours.template_pos), position(ours.search_pos),
                               encoder, head)
    return reference.to(next(ours.parameters()).device).eval()
