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


def frozen_inputs(vocab: int, patch: int, log_sigma: float, seed: int = 0):
    """A Mix-d layer with patches of latents drawn from its codebook, and the features its head reads."""
    coupling, generator = tied_coupling(vocab, dim=8, log_sigma=log_sigma, seed=seed)
    coupling = MixtureRosenblattCoupling(8, patch, 8, vocab, coupling.components).requires_grad_(False)
    with torch.no_grad():
        coupling.head.weight.normal_(generator=generator)
        coupling.head.bias.zero_()
    codebook = coupling.components
    ids = torch.randint(0, vocab, (2, 6 * patch), generator=generator)
    z = codebook.mu[ids] + codebook.log_sigma[ids].exp()[..., None] * torch.randn(2, 6 * patch, 8, generator=generator)
    return coupling, z.reshape(2, 6, patch * 8), torch.randn(2, 6, 8, generator=generator)


@pytest.mark.parametrize("patch, log_sigma", [(1, -2.5), (2, -3.0)])
def test_frozen_pruned_transform_matches_float64(patch, log_sigma, monkeypatch):
    """The frozen layer's u within max(1e-5, 1.5× the dense float32 transform's error) of float64, its log|det|
    within 1e-4·max(1, |log det|); the pruned path is the one that ran."""
    coupling, z, features = frozen_inputs(3000, patch, log_sigma)
    ran = []
    original = couplings.pruned_rosenblatt_u
    monkeypatch.setattr(couplings, "pruned_rosenblatt_u", lambda *a: ran.append(original(*a)) or ran[-1])
    with torch.no_grad():
        u, log_det = coupling(z, features)
    assert ran and all(result is not None for result in ran)
    u_dense, _ = coupling(z.clone().requires_grad_(True), features)                   # with gradients: dense
    u64, log_det64 = coupling.double()(z.double(), features.double())
    dense_error = (u_dense.double() - u64).abs().max()
    assert (u.double() - u64).abs().max() <= max(1e-5, 1.5 * dense_error)
    assert ((log_det.double() - log_det64).abs() <= 1e-4 * log_det64.abs().clamp_min(1)).all()


def test_frozen_transform_recomputes_tokens_it_cannot_certify(monkeypatch):
    coupling, z, features = frozen_inputs(3000, 1, -2.5)
    original = couplings.pruned_rosenblatt_u

    def uncertain_first_token(*args):
        u, certified = original(*args)
        certified[0, 3] = False
        return u.fill_(7.0), certified                                   # a wrong u everywhere it is not redone
    redone = []
    dense = coupling._rosenblatt
    monkeypatch.setattr(couplings, "pruned_rosenblatt_u", uncertain_first_token)
    monkeypatch.setattr(coupling, "_rosenblatt", lambda *a: redone.append(a[0].shape[0]) or dense(*a))
    with torch.no_grad():
        u, _ = coupling(z, features)
    assert redone == [1] and bool((u.view(-1, 8)[0] != 7.0).all()) and bool((u.view(-1, 8)[1:] == 7.0).all())


def test_frozen_transform_falls_back_to_dense_when_pruning_would_not_pay(monkeypatch):
    coupling, z, features = frozen_inputs(3000, 1, 1.0)                  # wide components: nothing prunes
    assert mixd_pruning.pruned_rosenblatt_u(z.view(-1, 8), torch.log_softmax(torch.zeros(12, 3000), -1),
                                            coupling.components.mu, coupling.components.log_sigma) is None
    with torch.no_grad():
        u, log_det = coupling(z, features)
    u_dense, log_det_dense = coupling._rosenblatt(z.view(12, 1, 8), coupling.mixture_logits(features).flatten(0, 1))
    torch.testing.assert_close(u, u_dense.view_as(u))
