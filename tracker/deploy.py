"""The deployed tracker: STARK-Lightning's per-frame search branch computed for inference speed, same boxes.

`DeployedTracker(model)` copies a trained `StarkLightning`, reparameterises the copy (RepVGG branches and BN
folded into single convs) and computes what the eager model computes, within float rounding, with less work:

- convolutions (backbone, bottleneck, head) run in channels-last memory format, which oneDNN's kernels prefer
  on CPU; the encoder's output tokens are already channels-last when viewed as the head's (B, C, H, W) input;
- on CPU each conv and its activation run as one oneDNN primitive (`ConvAct`), and the wide 3x3 convs on small
  maps (backbone stage3, the baseline head) by Winograd's F(2x2, 3x3) (`WinogradConvAct`);
- everything that depends only on the template is computed once per sequence (`encode_template`): its keys
  W_k (tokens + pos) + b_k, its values W_v tokens + b_v, and which of its keys are padding;
- everything that depends only on the weights is computed once, at construction: the search positions' part of
  the bottleneck output (b + pos), and their part of the query/key/value projections. With the query
  q = tokens + pos, the search keys are W_k q + b_k, the values W_v tokens + b_v = W_v q + (b_v - W_v pos):
  one matrix product of q with the packed in-projection plus a per-token bias table gives all three;
- attention is `scaled_dot_product_attention` (no attention weights are formed for the caller);
- it runs under `torch.inference_mode`.

`compile="inductor"` additionally compiles the search branch with `torch.compile` (inductor with frozen
weights; on CPU it needs a C++ compiler, and the first frame pays for the compilation: seconds to a minute).
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F
from torchvision.ops import box_convert

from heads import DepthwiseSeparableBlock, RepVGGBlock, reparameterize

from .model import StarkLightning

# oneDNN's fused conv + activation (the kernel inductor emits for CPU), by the name and scalars it takes.
_ONEDNN_ACTIVATIONS = {nn.ReLU: ("relu", []), nn.ReLU6: ("hardtanh", [0.0, 6.0]), type(None): ("none", [])}


class ConvAct(nn.Module):
    """A deploy-form conv (bias included) followed by its activation, as one oneDNN primitive on CPU where
    oneDNN has that activation: the activation is applied to the conv's output in cache, not in a second pass
    over memory. Elsewhere (CUDA, other activations) it is the two modules in turn."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None = None):
        super().__init__()
        self.conv, self.act = conv, act
        fused = _ONEDNN_ACTIVATIONS.get(type(act))
        self.onednn = (fused is not None and conv.weight.device.type == "cpu" and conv.padding_mode == "zeros"
                       and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))
        self.attr, self.scalars = fused if fused is not None else ("none", [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and x.device.type == "cpu" and x.dtype == torch.float32:
            c = self.conv
            return torch.ops.mkldnn._convolution_pointwise(x, c.weight, c.bias, c.padding, c.stride, c.dilation,
                                                           c.groups, self.attr, self.scalars, "")
        x = self.conv(x)
        return x if self.act is None else self.act(x)


class WinogradConvAct(ConvAct):
    """A 3x3 stride-1 conv + activation by Winograd's F(2x2, 3x3): each 2x2 output tile costs 16 multiplies per
    channel pair instead of 36, so the matrix products shrink 2.25x for a few cheap linear transforms. Same
    outputs within float rounding (measured: about 1e-6 relative, as a direct conv). Used where it measured
    faster on CPU than oneDNN's direct conv: wide layers (>= 128 channels) on small maps (the backbone's last
    stage, the baseline head). Maps with an odd side fall back to the direct conv."""

    # input transform B^T d B, weight transform G g G^T, output transform A^T m A (Lavin & Gray, 2015)
    _B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
    _G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
    _A_T = ((1, 1, 1, 0), (0, 1, -1, -1))

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None = None):
        super().__init__(conv, act)
        b_t, g, a_t = (torch.tensor(m, dtype=torch.float64) for m in (self._B_T, self._G, self._A_T))
        with torch.no_grad():
            u = g @ conv.weight.double() @ g.T  # (C_out, C_in, 4, 4)
            self.register_buffer("u", u.permute(2, 3, 1, 0).reshape(16, conv.in_channels, conv.out_channels)
                                 .float().contiguous())  # (16, C_in, C_out)
        self.register_buffer("b_t", torch.kron(b_t, b_t).float())  # (16, 16) on the flattened 4x4 tile
        self.register_buffer("a_t", torch.kron(a_t, a_t).float())  # (4, 16)
        # the bias, added in the transformed domain at the one position the output transform passes to every
        # output pixel (column 5 of A^T (x) A^T is all ones), so the matrix product adds it
        bias_in = torch.zeros(16, 1, conv.out_channels)
        bias_in[5, 0] = conv.bias.detach()
        assert torch.equal(self.a_t[:, 5], torch.ones(4))
        self.register_buffer("bias_in", bias_in)

    @staticmethod
    def suits(conv: nn.Conv2d, act: nn.Module | None) -> bool:
        return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
                and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
                and conv.in_channels >= 128 and conv.out_channels >= 64 and conv.bias is not None
                and conv.weight.device.type == "cpu" and type(act) in _ONEDNN_ACTIVATIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if height % 2 or width % 2 or x.device.type != "cpu" or x.dtype != torch.float32:
            return super().forward(x)
        rows, cols = height // 2, width // 2
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (B, H + 2, W + 2, C)
        s = padded.stride()
        tiles = padded.as_strided((4, 4, batch, rows, cols, channels), (s[1], s[2], s[0], 2 * s[1], 2 * s[2], s[3]))
        v = torch.mm(self.b_t, tiles.reshape(16, -1)).view(16, -1, channels)  # (16, tiles, C_in)
        m = torch.baddbmm(self.bias_in, v, self.u)  # (16, tiles, C_out)
        out_channels = m.shape[-1]
        y = torch.mm(self.a_t, m.view(16, -1)).view(2, 2, batch, rows, cols, out_channels)
        out = y.permute(2, 3, 0, 4, 1, 5).contiguous()  # (B, H / 2, 2, W / 2, 2, C_out): (B, H, W, C_out) in memory
        if isinstance(self.act, nn.ReLU):
            out.relu_()
        elif isinstance(self.act, nn.ReLU6):
            out.clamp_(0.0, 6.0)
        return out.view(batch, height, width, out_channels).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)


def _conv_act(conv: nn.Conv2d, act: nn.Module | None = None) -> ConvAct:
    return (WinogradConvAct if WinogradConvAct.suits(conv, act) else ConvAct)(conv, act)


def _fuse_tower(blocks: nn.Sequential) -> nn.Sequential:
    """Deploy-form blocks as conv + activation pairs; block types without a plain conv sequence stay as they are."""
    layers = []
    for block in blocks:
        if isinstance(block, RepVGGBlock) and block.fused is not None:
            layers.append(_conv_act(block.fused, block.act))
        elif isinstance(block, DepthwiseSeparableBlock) and isinstance(block.depthwise_norm, nn.Identity):
            layers += [_conv_act(block.depthwise, block.depthwise_act), _conv_act(block.pointwise, block.pointwise_act)]
        else:
            layers.append(block)
    return nn.Sequential(*layers)


class TemplateCache(NamedTuple):
    """What one sequence's template contributes to every frame's attention."""

    key: torch.Tensor  # (B, Lz, C): W_k (template tokens + template pos) + b_k
    value: torch.Tensor  # (B, Lz, C): W_v template tokens + b_v
    bias: torch.Tensor  # (B, Lz) attention bias: 0 where the template key is attended, -inf where it is padding


class DeployedTracker(nn.Module):
    """Inference-only form of a `StarkLightning`: `encode_template(image, mask)` once per sequence, then
    `track(image, mask, cache)` per frame, returning `boxes` (B, 4: normalised cx, cy, w, h) and `corners`
    (normalised x1, y1, x2, y2) as `StarkLightning.track` does. The model passed in is not modified."""

    def __init__(self, model: StarkLightning, device: torch.device | str | None = None,
                 channels_last: bool = True, compile: str | None = None):
        super().__init__()
        if compile not in (None, "inductor"):
            raise ValueError(f"compile={compile!r} is not supported: None or 'inductor'")
        source = reparameterize(copy.deepcopy(model).eval())
        if device is not None:
            source = source.to(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for stage in ("stage0", "stage1", "stage2", "stage3"):
            setattr(source.backbone, stage, _fuse_tower(getattr(source.backbone, stage)))
        source.head.blocks, source.head.predictor = _fuse_tower(source.head.blocks), _conv_act(source.head.predictor)
        self.backbone = source.backbone.to(memory_format=self.memory_format)
        self.head = source.head.to(memory_format=self.memory_format)
        self.template_size, self.search_size = source.template_size, source.search_size
        self.stride, self.search_feat = source.stride, source.search_feat
        encoder, attn = source.encoder, source.encoder.self_attn
        self.num_heads, self.out_proj = attn.num_heads, attn.out_proj
        self.linear1, self.linear2, self.norm1, self.norm2 = (encoder.linear1, encoder.linear2, encoder.norm1,
                                                              encoder.norm2)
        self.bottleneck, self.template_pos = source.bottleneck, source.template_pos  # the template's, once
        with torch.no_grad():
            self.register_buffer("in_proj_weight", attn.in_proj.weight.clone())  # (3C, C): W_q, W_k, W_v
            self.register_buffer("in_proj_bias", attn.in_proj.bias.clone())
            self.register_buffer("bottleneck_weight", source.bottleneck.weight.flatten(1).clone())  # (C, C_in)
            search_pos = source.search_pos()[0]  # (Lx, C)
            # the bottleneck's bias and the search position: tokens + pos = W_b f + (b_b + pos)
            self.register_buffer("query_bias", source.bottleneck.bias + search_pos)
            # q W_in^T + this = [W_q q + b_q, W_k q + b_k, W_v (q - pos) + b_v]
            b_q, b_k, b_v = attn.in_proj.bias.chunk(3)
            w_v = attn.in_proj.weight.chunk(3)[2]
            self.register_buffer("qkv_bias", torch.cat((b_q.expand_as(search_pos), b_k.expand_as(search_pos),
                                                        b_v - F.linear(search_pos, w_v)), dim=1))
        self.eval()
        # freezing: the weights become constants, which lets inductor prepack them for oneDNN
        self._compiled = None if compile is None else torch.compile(self._search_branch, backend=compile,
                                                                    dynamic=False, options={"freezing": True})

    @staticmethod
    def _attention_bias(mask: torch.Tensor, size: int) -> torch.Tensor:
        """(B, H, W) pixel padding mask -> (B, h*w) additive attention bias, -inf on padded feature cells.
        Nearest-neighbour downsampling by the stride is what `F.interpolate(mask, size=(h, w))` picks when
        H = h * stride; an additive float mask runs faster in `scaled_dot_product_attention` than a boolean one."""
        step = mask.shape[-1] // size
        padding = mask[:, ::step, ::step].flatten(1)
        return torch.zeros(padding.shape, device=padding.device).masked_fill_(padding, float("-inf"))

    @torch.inference_mode()
    def encode_template(self, image: torch.Tensor, mask: torch.Tensor) -> TemplateCache:
        """(B, 3, Ht, Wt) normalised image, (B, Ht, Wt) padding mask -> the template's keys and values."""
        _, w_k, w_v = self.in_proj_weight.chunk(3)
        _, b_k, b_v = self.in_proj_bias.chunk(3)
        feat = self.bottleneck(self.backbone(image.contiguous(memory_format=self.memory_format)))
        tokens = feat.flatten(2).transpose(1, 2)
        key = F.linear(tokens + self.template_pos(), w_k, b_k)
        value = F.linear(tokens, w_v, b_v)
        return TemplateCache(key.contiguous(), value.contiguous(), self._attention_bias(mask, feat.shape[-1]))

    def _search_branch(self, image: torch.Tensor, search_bias: torch.Tensor, key: torch.Tensor,
                       value: torch.Tensor, template_bias: torch.Tensor) -> torch.Tensor:
        batch, size = image.shape[0], self.search_feat
        feat = self.backbone(image.contiguous(memory_format=self.memory_format))  # (B, C_in, h, w)
        tokens = feat.permute(0, 2, 3, 1).reshape(batch, size * size, -1)  # a view when channels-last
        query = F.linear(tokens, self.bottleneck_weight).add_(self.query_bias)  # search tokens + pos
        q, k, v = F.linear(query, self.in_proj_weight).add_(self.qkv_bias).chunk(3, dim=-1)
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # noqa: E731
        keys, values = torch.cat((key, k), dim=1), torch.cat((value, v), dim=1)
        bias = torch.cat((template_bias, search_bias), dim=1)[:, None, None, :]
        attended = F.scaled_dot_product_attention(heads(q), heads(keys), heads(values), attn_mask=bias)
        x = self.norm1(self.out_proj(attended.transpose(1, 2).flatten(2)).add_(query))
        x = self.norm2(self.linear2(F.relu_(self.linear1(x))).add_(x))
        # (B, L, C) tokens viewed as (B, C, h, w) are channels-last already: no copy before the head
        return self.head(x.transpose(1, 2).unflatten(2, (size, size)))

    @torch.inference_mode()
    def track(self, image: torch.Tensor, mask: torch.Tensor, cache: TemplateCache) -> dict[str, torch.Tensor]:
        """(B, 3, Hs, Ws) search crop and (B, Hs, Ws) padding mask against the cached template."""
        search = self._compiled or self._search_branch
        corners = search(image, self._attention_bias(mask, self.search_feat), cache.key, cache.value, cache.bias)
        return {"corners": corners, "boxes": box_convert(corners, "xyxy", "cxcywh")}
