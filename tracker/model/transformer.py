"""STARK-Lightning's single lite encoder layer: search tokens attend to template + search tokens."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class CrossAttention(nn.Module):
    """Multi-head attention with one packed in-projection (as nn.MultiheadAttention stores it), computed with
    `scaled_dot_product_attention` so fused kernels run where they exist."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"encoder dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query, key, value, key_padding_mask=None):
        """(B, Lq, C), (B, Lk, C), (B, Lk, C); key_padding_mask (B, Lk) True where the key is padding."""
        w_q, w_k, w_v = self.in_proj.weight.chunk(3)
        b_q, b_k, b_v = self.in_proj.bias.chunk(3)
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # noqa: E731
        q, k, v = heads(F.linear(query, w_q, b_q)), heads(F.linear(key, w_k, b_k)), heads(F.linear(value, w_v, b_v))
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class LiteEncoderLayer(nn.Module):
    """Post-norm encoder layer. Query: search features + pos; key: template and search features + pos;
    value: the same features without pos. The first residual adds the query, position included, as STARK's
    `TransformerEncoderLayerLite` does. Only the search tokens come out."""

    def __init__(self, dim: int = 128, num_heads: int = 8, ffn_dim: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.self_attn = CrossAttention(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, search, search_pos, memory, memory_pos, memory_mask=None):
        query = search + search_pos
        attn = self.self_attn(query, memory + memory_pos, memory, memory_mask)
        x = self.norm1(query + self.dropout1(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(ffn))


class LearnedPositionEmbedding(nn.Module):
    """Absolute position: a column and a row embedding table, concatenated (column first)."""

    def __init__(self, size: int, dim: int = 64):
        super().__init__()
        self.size = size
        self.col_embed = nn.Embedding(size, dim)
        self.row_embed = nn.Embedding(size, dim)

    def forward(self) -> torch.Tensor:
        """(1, size*size, 2*dim), row-major over (y, x)."""
        idx = torch.arange(self.size, device=self.col_embed.weight.device)
        col = self.col_embed(idx)[None, :, :].expand(self.size, -1, -1)
        row = self.row_embed(idx)[:, None, :].expand(-1, self.size, -1)
        return torch.cat((col, row), dim=-1).flatten(0, 1)[None]
