"""The first flow layer's inverse with its tokens decided as it goes: patch by patch, each patch's log π_t passed
through the sampling controls and its tokens decided as soon as it is inverted (`next_token_controls.py`), and no
further patch inverted once every row has ended.

`DecidingInversion` wraps the inversion strategy of the other layers (sequential or Jacobi, `inversion.py`), which
it uses for them unchanged. The first layer is inverted exactly (patch after patch, eagerly): its controls depend
on the tokens decided before each patch, which a Jacobi block or a compiled graph would not see. The positions
that no patch was inverted for, after every row ended, hold NaN latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .couplings import MixtureRosenblattCoupling
from .inversion import (JacobiInversion, LayerInversion, SequentialInversion, checked_inverse,
                        invert_patch_by_patch)
from .next_token_controls import TokenDecider
from .transformer import CausalConditioner, ConditionerContext


@dataclass(frozen=True)
class DecidingInversion:
    """`base` inverts every layer but `first` (the first flow layer's coupling), which is inverted patch by patch
    with `decider` deciding each patch's tokens."""

    base: SequentialInversion | JacobiInversion
    first: nn.Module
    decider: TokenDecider

    @property
    def use_cache(self) -> bool:
        return self.base.use_cache

    def invert(self, conditioner: CausalConditioner, coupling, y: torch.Tensor, context: ConditionerContext,
               layer_name: str = "a flow layer") -> LayerInversion:
        if coupling is not self.first:
            return self.base.invert(conditioner, coupling, y, context, layer_name)
        warper = self.decider.warp_log_pi if self.decider.controls.changes_pi else None
        if warper is not None and not isinstance(coupling, MixtureRosenblattCoupling):
            raise TypeError("log π controls need a Mix-d first layer")
        options = {} if warper is None else {"log_pi_warper": warper}
        inverse = checked_inverse(lambda u, features: coupling.inverse(u, features, self.base.root, **options),
                                  layer_name)
        h, iterations = invert_patch_by_patch(inverse, conditioner, y, context, stop=self.decider.decide)
        rest = y.shape[1] - h.shape[1]
        if rest:
            h = torch.cat([h, h.new_full((h.shape[0], rest, h.shape[2]), float("nan"))], dim=1)
        return LayerInversion(h, iterations, [])


__all__ = ["DecidingInversion"]
