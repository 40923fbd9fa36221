"""The causal transformer that conditions one flow layer, with SDPA attention and a preallocated KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Keys and values of every attention layer of one transformer, preallocated for `max_length` positions.

    Writing position range [start, start + n) never reallocates (no `torch.cat` growth); attention reads the
    prefix [0, start + n).
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, max_length: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch_size, num_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.max_length = max_length

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + key.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; cannot write up to {end}")
        self.keys[layer][:, :, start:end] = key
        self.values[layer][:, :, start:end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, start: int = 0) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (B, nh, n, hs)
        mask, is_causal = None, True
        if cache is not None:
            k, v = cache.update(layer, k, v, start)
            if start > 0:
                # queries at start..start+n−1 see every cached key up to their own position
                is_causal = False
                if length > 1:
                    key_pos = torch.arange(start + length, device=x.device)
                    mask = key_pos <= torch.arange(start, start + length, device=x.device).unsqueeze(-1)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, intermediate_size)
        self.proj = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float, eps: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(hidden_size, eps=eps)
        self.attn = CausalSelfAttention(hidden_size, num_heads, dropout)
        self.ln_mlp = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = MLP(hidden_size, intermediate_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, start: int = 0) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_attn(x), cache, layer, start))
        return x + self.dropout(self.mlp(self.ln_mlp(x)))


class CausalConditioner(nn.Module):
    r"""Features f_t of patch t computed from the preceding patches h_{<t} only (the context C_t of §3).

    The input sequence is shifted right by one: position 0 reads a learned start vector (so the first patch has a
    learned, not fixed, distribution), position t reads proj_in(h_{t−1}); causal attention then gives f_t = f(h_{<t}).
    """

    def __init__(self, in_channels: int, hidden_size: int, num_heads: int, intermediate_size: int,
                 num_layers: int, max_positions: int, dropout: float, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.max_positions = max_positions
        self.proj_in = nn.Linear(in_channels, hidden_size)
        self.start = nn.Parameter(torch.empty(hidden_size))
        self.position = nn.Parameter(torch.empty(max_positions, hidden_size))
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, intermediate_size, dropout, eps) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, h: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """h: (B, N, c) patches in this layer's order → f: (B, N, D), f_t depending on h_{<t}."""
        x = self._embed(h[:, :-1])
        x = torch.cat([self.start.expand(h.shape[0], 1, -1).to(x.dtype), x], dim=1)
        return self._run(x, 0, cache)

    def step(self, h_previous: torch.Tensor | None, position: int, cache: KVCache, batch_size: int) -> torch.Tensor:
        """Features of the n positions [position, position + n) with the cache holding every earlier position:
        (B, n, D). `h_previous` (B, n, c) holds the patches at [position − 1, position + n − 1), each position
        reading the one before it; at position 0 its first row is unused (the learned start vector is read), and
        None stands for a single position 0. Writes the n positions' keys and values into the cache.
        """
        if h_previous is None:
            x = self.start.expand(batch_size, 1, -1)
        else:
            x = self._embed(h_previous)
            if position == 0:
                x = torch.cat([self.start.expand(batch_size, 1, -1).to(x.dtype), x[:, 1:]], dim=1)
        return self._run(x, position, cache)

    def _embed(self, h: torch.Tensor) -> torch.Tensor:
        # Couplings return patches in float32 or wider (mixture math); the network runs in its own dtype (bf16 too).
        return self.proj_in(h.to(self.proj_in.weight.dtype))

    def _run(self, x: torch.Tensor, start: int, cache: KVCache | None) -> torch.Tensor:
        x = x + self.position[start:start + x.shape[1]].to(x.dtype)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, start)
        return self.ln_f(x)

    def new_cache(self, batch_size: int, max_length: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        head_dim = self.start.shape[0] // self.num_heads
        return KVCache(len(self.blocks), batch_size, self.num_heads, max_length, head_dim, device, dtype)


__all__ = ["KVCache", "CausalSelfAttention", "MLP", "TransformerBlock", "CausalConditioner"]
