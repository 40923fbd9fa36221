r"""Prompt conditioning: sample a continuation from the flow prior's conditional given the prompt's latents (the
prefix-conditioned generation of §4, Fig. 5).

The prompt x_{≤m} is encoded to c ~ q(z_{≤m} | x_{≤m}), and the continuation is drawn from the flow prior's
conditional p_τ(z_{>m} | z_{≤m} = c), where p_τ is the flow's push-forward of N(0, τ²I) (τ = 1: the model).

**Only left-to-right layers: exact.** Each layer's output over the prompt depends only on its input over the
prompt, so one forward pass of c gives every layer's input over the prompt; inverting the continuation patch by
patch, each layer conditioned on its own prompt prefix (its KV cache prefilled with it: a `FlowPrompt` given to
`FlowStack.inverse`), is exact ancestral sampling.

**With right-to-left layers: importance resampling, then Metropolis–Hastings.** A right-to-left layer's output
over the prompt depends on the continuation, so the prompt prefixes of the layers above it are unknown until the
continuation is. The *proposal* q_r(z_{>m}) takes prefixes r (every layer's input over the prompt) as if known,
draws ε ~ N(0, τ²I) and inverts the continuation exactly as in the left-to-right case (a right-to-left layer
inverts the continuation without reading the prompt, which comes after it in its order). Its density is tractable:
the *clamped* forward pass — each layer reading the prefix r before the continuation — maps z_{>m} back to ε, so
log q_r(z_{>m}) = log N(ε; 0, τ²I) + Σ_ℓ log|det| over the continuation's patches. Then

1. *Start*: `proposals` candidates per sequence, drawn in parallel from q_{r0} with r0 the prefixes of [c, 0], are
   weighted by p_τ(c, z) / q_{r0}(z) and one is resampled (sampling importance resampling: exact as the number of
   candidates grows; parallel candidates cost little where sampling is bound by per-step overhead).
2. *Moves*: `mcmc_steps` Metropolis–Hastings moves, each proposing from q_{r(z)} with the prefixes r(z) of the
   current state [c, z] and accepting with probability

       min(1, p_τ(c, z') q_{r(z')}(z) / (p_τ(c, z) q_{r(z)}(z'))),

   which leaves p_τ(z_{>m} | c) exactly invariant. Each costs one sequential inversion of the continuation and
   three parallel forward passes.

Without right-to-left layers r does not depend on the continuation, q_r is the exact conditional, every weight is
equal and every move would be accepted (log α = 0), so one proposal is the answer. With τ = 0 there is no
randomness to correct: one proposal from r0 is returned. A single proposal with no correction (`proposals=1`,
`mcmc_steps=0`) is fast but biased; `TarFlowGenerateOutput` reports the effective sample size of the start and the
fraction of accepted moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .flow import FlowInversion, FlowPrompt, FlowStack, Inversion


class PromptedSample(NamedTuple):
    """The latents z (B, m + n, d) of prompt and continuation, the last inversion's details, and per sequence the
    effective sample size of the importance-resampled start and the fraction of accepted Metropolis–Hastings moves
    (both None when no right-to-left layer needs them)."""

    z: torch.Tensor
    inversion: FlowInversion
    effective_sample_size: torch.Tensor | None
    acceptance: torch.Tensor | None


class _ChainState(NamedTuple):
    """Continuations (B, n, d), every layer's input over the prompt (the prefixes r of a proposal from this state),
    and log p_τ(c, z_{>m}) up to a constant."""

    continuation: torch.Tensor
    prefixes: FlowPrompt
    log_joint: torch.Tensor


@torch.no_grad()
def sample_continuation(flow: FlowStack, prompt_z: torch.Tensor, noise: torch.Tensor, inversion: Inversion,
                        temperature: float = 1.0, proposals: int = 8, mcmc_steps: int = 4,
                        generator: torch.Generator | None = None) -> PromptedSample:
    """z (B, m + n, d) = [c, z_{>m}] with z_{>m} ~ p_τ(z_{>m} | c) (see the module docstring).

    Args:
        prompt_z: c, the prompt's latents (B, m, d), m a multiple of the patch size.
        noise: base noise ε ~ N(0, τ²I), already scaled by τ, (B, n, d): the (first) proposal's.
        inversion: how each layer is inverted (`SequentialInversion` or `JacobiInversion`).
        proposals, mcmc_steps: candidates of the importance-resampled start, and Metropolis–Hastings moves after
            it (used only when right-to-left layers are present).
    """
    sampler = _PromptSampler(flow, prompt_z, inversion, temperature, generator)
    if not flow.has_right_to_left:
        prompt = FlowPrompt.from_hidden_states(flow(prompt_z, check_finite=False).hidden_states, prompt_z.shape[1])
        return sampler.sample(flow.inverse(noise, prompt, inversion))
    start = _chain_state(flow, prompt_z, torch.zeros_like(noise), temperature)
    if temperature == 0:
        return sampler.sample(flow.inverse(noise, start.prefixes, inversion))
    state, inverted, effective = sampler.start(noise, start.prefixes, proposals)
    accepted = torch.zeros(noise.shape[0], device=noise.device)
    for _ in range(mcmc_steps):
        state, accept, inverted = sampler.move(state)
        accepted += accept.to(accepted.dtype)
    acceptance = accepted / mcmc_steps if mcmc_steps else None
    return PromptedSample(torch.cat([prompt_z, state.continuation], dim=1), inverted, effective, acceptance)


@dataclass
class _PromptSampler:
    """What every step of the sampler shares: the flow, the prompt's latents c, how layers are inverted, τ and the
    random generator."""

    flow: FlowStack
    prompt_z: torch.Tensor
    inversion: Inversion
    temperature: float
    generator: torch.Generator | None

    def sample(self, inverted: FlowInversion) -> PromptedSample:
        """The exact conditional sample (no right-to-left layer, or τ = 0) from one inversion."""
        return PromptedSample(torch.cat([self.prompt_z, inverted.z], dim=1), inverted, None, None)

    def start(self, noise: torch.Tensor, prefixes: FlowPrompt, proposals: int):
        """K = `proposals` candidates per sequence from q_{r0} (the first from `noise`), one resampled by the
        weights p_τ(c, z) / q_{r0}(z); returns it as a chain state, the inversion, and the weights' effective
        sample size."""
        batch = noise.shape[0]
        extra = [self._noise_like(noise) for _ in range(proposals - 1)]
        candidate_noise = torch.stack([noise, *extra], dim=1).flatten(0, 1)                 # (B·K, n, d)
        repeated = prefixes.map(lambda level: level.repeat_interleave(proposals, dim=0))
        inverted = self.flow.inverse(candidate_noise, repeated, self.inversion)
        candidates = _chain_state(self.flow, self.prompt_z.repeat_interleave(proposals, dim=0), inverted.z,
                                  self.temperature)
        log_weights = candidates.log_joint - _proposal_log_prob(self.flow, inverted.z, repeated, self.temperature)
        weights = torch.softmax(log_weights.double().view(batch, proposals), dim=-1)
        chosen = torch.multinomial(weights, 1, generator=self.generator).squeeze(-1) + proposals * torch.arange(
            batch, device=weights.device)
        state = _ChainState(candidates.continuation[chosen], candidates.prefixes.map(lambda level: level[chosen]),
                            candidates.log_joint[chosen])
        return state, inverted, 1.0 / weights.square().sum(-1)

    def move(self, state: _ChainState) -> tuple[_ChainState, torch.Tensor, FlowInversion]:
        """One Metropolis–Hastings move: propose from q_{r(z)}, accept by `_metropolis_hastings`."""
        inverted = self.flow.inverse(self._noise_like(state.continuation), state.prefixes, self.inversion)
        proposal = _chain_state(self.flow, self.prompt_z, inverted.z, self.temperature)
        accept = _metropolis_hastings(self.flow, state, proposal, self.temperature, self.generator)
        return _select(accept, proposal, state), accept, inverted

    def _noise_like(self, noise: torch.Tensor) -> torch.Tensor:
        return self.temperature * torch.randn(noise.shape, generator=self.generator, device=noise.device,
                                              dtype=noise.dtype)


def _chain_state(flow: FlowStack, prompt_z: torch.Tensor, continuation: torch.Tensor,
                 temperature: float) -> _ChainState:
    forward = flow(torch.cat([prompt_z, continuation], dim=1), check_finite=False)
    log_joint = _base_log_prob(forward.u, temperature) + forward.log_det
    return _ChainState(continuation, FlowPrompt.from_hidden_states(forward.hidden_states, prompt_z.shape[1]),
                       log_joint)


def _proposal_log_prob(flow: FlowStack, continuation: torch.Tensor, prefixes: FlowPrompt,
                       temperature: float) -> torch.Tensor:
    """log q_r(z_{>m}) up to a constant, by the clamped forward pass (each layer reads its prefix r first)."""
    forward = flow(continuation, prompt=prefixes, check_finite=False)
    return _base_log_prob(forward.u, temperature) + forward.log_det


def _base_log_prob(u: torch.Tensor, temperature: float) -> torch.Tensor:
    """log N(u; 0, τ²I) per sequence, without its constant (the constants cancel in every ratio used here)."""
    return -0.5 * u.square().sum((1, 2)) / temperature ** 2


def _metropolis_hastings(flow: FlowStack, state: _ChainState, proposal: _ChainState, temperature: float,
                         generator: torch.Generator | None) -> torch.Tensor:
    """Accept (B,) bool: log U < log p(c,z') − log p(c,z) + log q_{r(z')}(z) − log q_{r(z)}(z')."""
    forward_move = _proposal_log_prob(flow, proposal.continuation, state.prefixes, temperature)
    backward_move = _proposal_log_prob(flow, state.continuation, proposal.prefixes, temperature)
    log_ratio = proposal.log_joint - state.log_joint + backward_move - forward_move
    uniform = torch.rand(log_ratio.shape, generator=generator, device=log_ratio.device, dtype=torch.float64)
    return torch.log(uniform) < log_ratio.double()


def _select(accept: torch.Tensor, proposal: _ChainState, state: _ChainState) -> _ChainState:
    def pick(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return torch.where(accept.view(-1, *([1] * (new.dim() - 1))), new, old)

    prefixes = FlowPrompt(tuple(pick(new, old) for new, old in zip(proposal.prefixes.levels, state.prefixes.levels)))
    return _ChainState(pick(proposal.continuation, state.continuation), prefixes,
                       pick(proposal.log_joint, state.log_joint))


__all__ = ["PromptedSample", "sample_continuation"]
