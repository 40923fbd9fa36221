"""Certified pruning of the Mix-d inverse (App. B, Lemma 1): the discarded posterior mass stays below ε·Φ(−|u|), the
fallback to the full mixture runs when the bound cannot be met, and the pruned inverse is the exact inverse: the
Rosenblatt transform of its output, in float64, gives u back to 1e-5."""

import math

import pytest
import torch

from modeling_tarflow import couplings, mixd_pruning
from modeling_tarflow.codebook import GaussianCodebook
from modeling_tarflow.couplings import MixtureRosenblattCoupling
from modeling_tarflow.mixd_pruning import PRUNING_TOLERANCE, prune_mixture, pruning_log_threshold


def tied_coupling(vocab: int = 3000, dim: int = 6, log_sigma: float = -2.0, seed: int = 0):
    """A Mix-d layer over a narrow codebook (a trained one's shape) with a peaked head, and features for it."""
    generator = torch.Generator().manual_seed(seed)
    codebook = GaussianCodebook(vocab, dim)
    coupling = MixtureRosenblattCoupling(8, 1, dim, vocab, codebook)
    with torch.no_grad():
        codebook.mu.normal_(generator=generator)
        codebook.log_sigma.copy_(log_sigma + 0.3 * torch.randn(vocab, generator=generator))
        coupling.head.weight.normal_(generator=generator).mul_(2.0)
        coupling.head.bias.zero_()
    return coupling.requires_grad_(False), generator


def test_discarded_mass_is_below_the_bound():
    generator = torch.Generator().manual_seed(1)
    log_alpha = torch.log_softmax(20 * torch.randn(5, 2000, generator=generator), -1)
    u = torch.randn(5, generator=generator) * 2
    pruned = prune_mixture(u, log_alpha, torch.randn(2000), torch.zeros(2000))
    assert pruned is not None and pruned.log_w.shape[-1] < 1000
    bound = math.log(PRUNING_TOLERANCE) + torch.special.log_ndtr(-u.abs())
    assert bool((pruned.log_discarded <= bound).all())
    exact = torch.logsumexp(torch.where(log_alpha < pruning_log_threshold(u, 2000)[:, None], log_alpha, -math.inf), -1)
    assert bool((pruned.log_discarded <= exact + 1e-4).all())   # no more than what lies below the threshold
    torch.testing.assert_close(pruned.log_w.exp().sum(-1), torch.ones(5))


def test_fallback_when_the_bound_fails_or_nothing_would_be_gained():
    generator = torch.Generator().manual_seed(2)
    log_alpha = torch.log_softmax(8 * torch.randn(3, 2000, generator=generator), -1)
    u = torch.randn(3, generator=generator)
    assert prune_mixture(u, log_alpha, torch.randn(2000), torch.zeros(2000), max_kept=1) is None   # bound fails
    flat = torch.full((3, 2000), -math.log(2000))
    assert prune_mixture(u, flat, torch.randn(2000), torch.zeros(2000)) is None                  # keeps all


@pytest.mark.parametrize("batch", [1, 4])
def test_pruned_inverse_is_the_exact_inverse(batch, monkeypatch):
    coupling, generator = tied_coupling()
    u = torch.randn(batch, 1, 6, generator=generator)
    features = torch.randn(batch, 1, 8, generator=generator)
    kept = []
    original = couplings.prune_mixture
    monkeypatch.setattr(couplings, "prune_mixture", lambda *a, **k: kept.append(original(*a, **k)) or kept[-1])
    h, _ = coupling.inverse(u, features)
    assert any(p is not None and p.log_w.shape[-1] < 100 for p in kept)   # later dimensions do prune
    monkeypatch.setattr(couplings, "prune_mixture", lambda *a, **k: None)
    h_full, _ = coupling.inverse(u, features)
    assert (h - h_full).abs().max() < 1e-5
    u_again, _ = coupling.double()(h.double(), features.double())          # float64 at the same float32 h
    assert (u_again - u.double()).abs().max() < 1e-5


def test_branch_free_mode_solves_the_full_mixture(monkeypatch):
    coupling, generator = tied_coupling(vocab=500, dim=3)
    calls = []
    monkeypatch.setattr(couplings, "prune_mixture", lambda *a, **k: calls.append(1))
    coupling.inverse(torch.randn(1, 1, 3, generator=generator), torch.randn(1, 1, 8, generator=generator),
                     couplings.RootFinding(fixed_iterations=30))
    assert not calls


def test_tolerance_is_the_module_constant():
    assert mixd_pruning.PRUNING_TOLERANCE == PRUNING_TOLERANCE <= 1e-7
