"""The causal transformer θ(h_{<t}) that conditions one flow layer (the context C_t^(ℓ) of §3.2–3.3), with SDPA
attention, a preallocated KV cache, and the prefill/step interface the layer's inverse runs on."""

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


class ConditionerContext:
    """What a conditioner has read while a layer is inverted: the patches before `position`, held as the keys and
    values of a `KVCache` (or, without one, as the patches themselves, recomputed at every step), and the last of
    them, `last` (B, 1, c), which the next position reads (None at position 0, which reads the start vector).
    Made by `CausalConditioner.prefill`; advanced by `advance` once the patches at `position` are known."""

    def __init__(self, cache: KVCache | None, known: list[torch.Tensor], last: torch.Tensor | None, position: int,
                 unread: torch.Tensor):
        self.cache, self.known, self.last, self.position = cache, known, last, position
        self.unread = unread        # a placeholder for the patch a sequence's last position never reads
        self.batch_size = unread.shape[0]

    def advance(self, patches: torch.Tensor) -> None:
        """Record the n patches (B, n, c) at [position, position + n)."""
        self.last, self.position = patches[:, -1:], self.position + patches.shape[1]
        if self.cache is None:
            self.known.append(patches)


class CausalConditioner(nn.Module):
    r"""Features f_t of patch t computed from the preceding patches h_{<t} only (the context C_t of §3.2).

    The input sequence is shifted right by one: position 0 reads a learned start vector (so the first patch has a
    learned, not fixed, distribution), position t reads proj_in(h_{t−1}); causal attention then gives f_t = f(h_{<t}).
    For the inverse, `prefill` reads a known prefix into a `ConditionerContext` and `step` gives the features of the
    next position(s) from it; the network runs in its own `dtype` (bf16 too) whatever the patches' dtype.
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

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_in.weight.dtype

    def forward(self, h: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """h: (B, N, c) patches in this layer's order → f: (B, N, D), f_t depending on h_{<t}."""
        x = self._embed(h[:, :-1])
        x = torch.cat([self.start.expand(h.shape[0], 1, -1).to(x.dtype), x], dim=1)
        return self._run(x, 0, cache)

    def prefill(self, prefix: torch.Tensor | None, y: torch.Tensor, use_cache: bool = True) -> ConditionerContext:
        """A context that has read the known patches `prefix` (B, Np, c) (None: none) and has room for the N patches
        of `y` (B, N, c) that follow them: with `use_cache`, a `KVCache` of Np + N positions filled with the
        prefix's keys and values; without, the prefix kept for recomputation."""
        batch, known = y.shape[0], 0 if prefix is None else prefix.shape[1]
        unread = y.new_zeros(batch, 1, y.shape[-1])
        if not use_cache:
            return ConditionerContext(None, [] if prefix is None else [prefix], None, known, unread)
        head_dim = self.start.shape[0] // self.num_heads
        cache = KVCache(len(self.blocks), batch, self.num_heads, known + y.shape[1], head_dim, y.device, self.dtype)
        if not known:
            return ConditionerContext(cache, [], None, 0, unread)
        self(prefix.to(self.dtype), cache)
        return ConditionerContext(cache, [], prefix[:, -1:], known, unread)

    def step(self, context: ConditionerContext, block: torch.Tensor | None = None) -> torch.Tensor:
        """Features (B, n, D) of the n positions from `context.position` on: one position (`block` None), or the n
        positions of `block` (B, n, c), a guess of their patches (Jacobi iteration), of which position t reads the
        one before it (the first reads `context.last`). Writes their keys and values into the cache; `advance` the
        context once their patches are final."""
        if context.cache is None:
            sequence = torch.cat([*context.known, context.unread], dim=1).to(self.dtype)
            return self(sequence)[:, -1:]
        if block is not None:
            first = context.last if context.last is not None else context.unread
            return self._step(torch.cat([first, block[:, :-1]], dim=1).to(self.dtype), context)
        return self._step(None if context.last is None else context.last.to(self.dtype), context)

    def _step(self, h_previous: torch.Tensor | None, context: ConditionerContext) -> torch.Tensor:
        """`h_previous` (B, n, c) holds the patches at [position − 1, position + n − 1); at position 0 its first row
        is unused (the learned start vector is read), and None stands for a single position 0."""
        position, batch_size = context.position, context.batch_size
        if h_previous is None:
            x = self.start.expand(batch_size, 1, -1)
        else:
            x = self._embed(h_previous)
            if position == 0:
                x = torch.cat([self.start.expand(batch_size, 1, -1).to(x.dtype), x[:, 1:]], dim=1)
        return self._run(x, position, context.cache)

    def _embed(self, h: torch.Tensor) -> torch.Tensor:
        # Couplings return patches in float32 or wider (mixture math); the network runs in its own dtype (bf16 too).
        return self.proj_in(h.to(self.dtype))

    def _run(self, x: torch.Tensor, start: int, cache: KVCache | None) -> torch.Tensor:
        x = x + self.position[start:start + x.shape[1]].to(x.dtype)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, start)
        return self.ln_f(x)


__all__ = ["KVCache", "CausalSelfAttention", "MLP", "TransformerBlock", "ConditionerContext", "CausalConditioner"]
