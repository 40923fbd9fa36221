"""Parameter heads θ: map transformer features f_t of the context C_t (and, dimension-wise autoregressively,
§3.2.1, the patch's own channels h_{t,<i}) to the per-channel parameters of a coupling (π, m, s of a mixture, or the
affine a, b). Both heads return (..., c, n): n parameters for each of the c channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """θ_{t,i} = (W f_t + b)_i: the channels of a patch are conditionally independent given the history.

    `identity_at_init` heads are zero-initialised, so their coupling starts as the identity (each new flow layer
    of progressive training then leaves the NELBO unchanged). The Mix-d head is not: its W is drawn like GPT-2's LM
    head (the Mix-d layer is an AR language model, Prop. 4), because with W = 0 the conditioner's gradient Wᵀ ∂L/∂θ
    is zero and the transformer only starts learning once W has grown; b = 0 still gives π ≈ uniform at start.
    """

    autoregressive = False

    def __init__(self, hidden_size: int, channels: int, params_per_channel: int, identity_at_init: bool = True):
        super().__init__()
        self.channels = channels
        self.params_per_channel = params_per_channel
        self.identity_at_init = identity_at_init
        # Own parameters rather than a child nn.Linear: the zero init lives with them in `_init_weights`.
        self.weight = nn.Parameter(torch.empty(channels * params_per_channel, hidden_size))
        self.bias = nn.Parameter(torch.empty(channels * params_per_channel))

    def forward(self, features: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(features, self.weight, self.bias).unflatten(-1, (self.channels, self.params_per_channel))


class MaskedAutoregressiveHead(nn.Module):
    r"""The MAF-MLP head (MAF [50] as in CNF [41], §4 "Model Configurations"): θ_{t,i} = g(f_t, h_{t,<i}), the
    dimension-wise autoregressive parameters of §3.2.1.

    Each channel value h_j is featurised as [h_j, elu(h_j), elu(−h_j)] and embedded to E units (block-diagonal);
    hidden block i (D/2 units) reads f_t and the embeddings of channels j < i (a masked linear layer); a
    block-diagonal output layer maps hidden block i to the n parameters of channel i. E = min(max(1, ⌊9D/16/(c−1)⌋), 96).
    The output layer is zero-initialised, so the coupling starts as the identity.
    """

    autoregressive = True

    def __init__(self, hidden_size: int, channels: int, params_per_channel: int, maf_hidden_size: int):
        super().__init__()
        self.channels = channels
        self.params_per_channel = params_per_channel
        embed = min(max(1, int(maf_hidden_size * 9 / 16 / max(channels - 1, 1))), 96)
        block = max(maf_hidden_size // 2, 1)
        self.embed_weight = nn.Parameter(torch.empty(channels, 3, embed))
        self.embed_bias = nn.Parameter(torch.empty(channels, embed))
        self.context = nn.Linear(hidden_size, channels * block)
        self.recurrent = nn.Linear(channels * embed, channels * block, bias=False)
        self.out_weight = nn.Parameter(torch.empty(channels, block, params_per_channel))
        self.out_bias = nn.Parameter(torch.empty(channels, params_per_channel))
        self.block_size, self.embed_size = block, embed
        self.register_buffer("mask", self.autoregressive_mask(), persistent=False)

    def autoregressive_mask(self) -> torch.Tensor:
        """(c·D/2, c·E) mask of the recurrent layer: hidden block i may read the embedding of channel j iff j < i."""
        allowed = torch.arange(self.channels).unsqueeze(1) > torch.arange(self.channels).unsqueeze(0)
        return allowed.repeat_interleave(self.block_size, 0).repeat_interleave(self.embed_size, 1).float()

    def forward(self, features: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """features (..., D), h (..., c) → parameters (..., c, n); row i depends on features and h[..., :i]."""
        values = torch.stack([h, F.elu(h), F.elu(-h)], dim=-1).to(self.embed_weight.dtype)
        embedded = F.gelu(torch.einsum("...ci,cie->...ce", values, self.embed_weight) + self.embed_bias)
        recurrent = F.linear(embedded.flatten(-2), self.recurrent.weight * self.mask.to(self.recurrent.weight.dtype))
        hidden = F.gelu(self.context(features) + recurrent).unflatten(-1, (self.channels, -1))
        return torch.einsum("...cb,cbn->...cn", hidden, self.out_weight) + self.out_bias

    def channel_by_channel(self, features: torch.Tensor) -> "ChannelByChannel":
        """The parameters one channel at a time, for the inverse (which recovers the channels in order)."""
        return ChannelByChannel(self, features)


class ChannelByChannel:
    r"""θ_i of a `MaskedAutoregressiveHead` for i = 0, 1, .., c − 1, given the channels observed so far.

    Each observed channel j is embedded once and its recurrent contribution W_{:, j} e_j added to every hidden
    block's pre-activation; block i is read before channel i is observed, so it has summed exactly the channels
    j < i that the mask allows. Equal to `forward(features, h)[..., i, :]` up to float summation order, with O(c)
    instead of O(c²) work over the c steps.
    """

    def __init__(self, head: MaskedAutoregressiveHead, features: torch.Tensor):
        self.head = head
        self.pre_activation = head.context(features)                     # (..., c·D/2)

    def params(self, channel: int) -> torch.Tensor:
        """θ_i, (..., n)."""
        head, size = self.head, self.head.block_size
        hidden = F.gelu(self.pre_activation[..., channel * size:(channel + 1) * size])
        return hidden @ head.out_weight[channel] + head.out_bias[channel]

    def observe(self, channel: int, h: torch.Tensor) -> None:
        """Record h_i, (...,)."""
        head, size = self.head, self.head.embed_size
        values = torch.stack([h, F.elu(h), F.elu(-h)], dim=-1).to(head.embed_weight.dtype)
        embedded = F.gelu(values @ head.embed_weight[channel] + head.embed_bias[channel])
        weight = head.recurrent.weight[:, channel * size:(channel + 1) * size]
        self.pre_activation = self.pre_activation + F.linear(embedded, weight)


__all__ = ["LinearHead", "MaskedAutoregressiveHead", "ChannelByChannel"]
