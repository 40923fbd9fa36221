"""The fused stage-1 terms (tied decoder normaliser and Mix-d density, §3.1–§3.3) equal the plain formula evaluated
in float64 at the same float32 inputs, with every gradient, under any output weighting and matmul precision, and keep
nothing V-sized for backward."""

import pytest
import torch

from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM
from modeling_tarflow import tied_mixd_likelihood
from modeling_tarflow.tied_mixd_likelihood import ChunkedTiedMixdTerms, tied_mixd_log_terms_reference

INPUTS = ("features", "weight", "bias", "z", "mu", "log_sigma")


def tied_inputs(sigma: float, rows: int = 96, width: int = 24, vocab: int = 700, dim: int = 8, seed: int = 0):
    """float32 leaves: head features/weight/bias, and latents drawn near a codebook of scale `sigma`."""
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    mu = randn(vocab, dim)
    log_sigma = torch.full((vocab,), sigma).log() + 0.2 * randn(vocab)
    ids = torch.randint(0, vocab, (rows,), generator=generator)
    z = mu[ids] + log_sigma[ids].exp()[:, None] * randn(rows, dim)
    leaves = (randn(rows, width), 0.3 * randn(vocab, width), 0.3 * randn(vocab), z, mu, log_sigma)
    return [t.clone().requires_grad_(True) for t in leaves]


def gradients(inputs, function, weights):
    """Values and gradients of Σ_t (w1_t LSE a_t + w2_t log p_mixd,t)."""
    for tensor in inputs:
        tensor.grad = None
    log_norm, log_p = function(*inputs)
    (weights[0] * log_norm + weights[1] * log_p).sum().backward()
    return (log_norm.detach(), log_p.detach()), [tensor.grad.clone() for tensor in inputs]


def fused(rows_per_chunk: int, normalizer_weight: float = 1.0):
    return lambda *inputs: ChunkedTiedMixdTerms.apply(*inputs, rows_per_chunk, normalizer_weight)


def reference64(*inputs):
    return tied_mixd_log_terms_reference(*(t.double() for t in inputs))


def assert_matches_float64(inputs, function, weights):
    (norm, log_p), grads = gradients(inputs, function, [w.float() for w in weights])
    (norm64, log_p64), grads64 = gradients(inputs, reference64, weights)
    assert (norm.double() - norm64).abs().max() < 1e-4       # nats per token
    assert (log_p.double() - log_p64).abs().max() < 1e-4
    for name, grad, grad64 in zip(INPUTS, grads, grads64):
        relative = (grad.double() - grad64).norm() / grad64.norm()
        assert relative < 1e-4, (name, relative.item())


@pytest.mark.parametrize("sigma", [0.5, 0.15])
@pytest.mark.parametrize("rows_per_chunk", [7, 96])
def test_nelbo_weighting_matches_float64(sigma, rows_per_chunk):
    """The weighting the forward pass differentiates: (+c, −c) on every row, as `loss` gives."""
    inputs = tied_inputs(sigma)
    c = torch.full((96,), 0.25, dtype=torch.float64)
    assert_matches_float64(inputs, fused(rows_per_chunk), (c, -c))


def test_density_only_weighting_matches_float64():
    inputs = tied_inputs(0.3)
    c = torch.full((96,), 1.0, dtype=torch.float64)
    assert_matches_float64(inputs, fused(16, normalizer_weight=0.0), (0 * c, -c))


def test_any_other_weighting_recomputes_exactly(monkeypatch):
    """Per-row weights the forward pass did not foresee: backward recomputes the chunks with them."""
    recomputed = []
    original = tied_mixd_likelihood._Terms.run
    monkeypatch.setattr(tied_mixd_likelihood._Terms, "run",
                        lambda self, *w: recomputed.append(1) or original(self, *w))
    weights = torch.rand(2, 96, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_matches_float64(tied_inputs(0.3), fused(32), (weights[0], -0.5 * weights[1]))
    assert len(recomputed) == 2               # the forward pass, and the recomputation in backward


def test_only_one_output_used_is_exact():
    inputs = tied_inputs(0.3)
    (_, _), grads = gradients(inputs, lambda *x: (fused(32)(*x)[1], torch.zeros(())), (torch.tensor(1.0), 0.0))
    (_, _), grads64 = gradients(inputs, lambda *x: (reference64(*x)[1], torch.zeros(())), (torch.tensor(1.0), 0.0))
    for grad, grad64 in zip(grads, grads64):
        assert (grad.double() - grad64).norm() <= 1e-4 * grad64.norm()


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_reduced_float32_matmul_precision_does_not_reach_the_codebook(precision):
    """TF32 (GPU) and bf16 passes (oneDNN on CPUs with AMX) stay off in the codebook matmuls; the setting is restored."""
    inputs = tied_inputs(0.15)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        log_norm, _ = fused(32)(*(t.detach() for t in inputs))
        restored = torch.get_float32_matmul_precision()
    finally:
        torch.set_float32_matmul_precision(saved)
    assert restored == precision
    assert (log_norm.double() - reference64(*(t.detach() for t in inputs))[0]).abs().max() < 1e-4


def test_nothing_vocabulary_sized_is_saved_for_backward():
    """Memory per token of the order of GPT-2's: no (tokens, V) tensor is kept between forward and backward."""
    config = TarFlowConfig(vocab_size=2000, latent_dim=4, hidden_size=32, num_attention_heads=2,
                           max_position_embeddings=32, flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": 1},
                                                                    {"coupling": "affine", "num_layers": 1}])
    model = TarFlowForCausalFlowLM(config)
    ids = torch.randint(0, 2000, (4, 32))
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(ids, num_flow_layers=1, output_u=False).loss
    loss.backward()
    parameter_sizes = {p.numel() for p in model.parameters()}
    assert max(size for size in sizes if size not in parameter_sizes) < ids.numel() * 2000 // 8


def test_compiled_mode_traces_the_plain_formula(monkeypatch):
    """Under torch.compile (and for small vocabularies) the reference formula runs (Inductor fuses it); it gives
    the same NELBO parts."""
    assert not tied_mixd_likelihood.use_fused_path(27) and tied_mixd_likelihood.use_fused_path(50257)
    config = TarFlowConfig(vocab_size=1500, latent_dim=4, patch_size=2, hidden_size=32, num_attention_heads=2,
                           max_position_embeddings=16, flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": 1},
                                                                    {"coupling": "affine", "num_layers": 1}])
    model = TarFlowForCausalFlowLM(config)
    ids, noise = torch.randint(0, 1500, (3, 16)), torch.randn(3, 16, 4)
    fast = model(ids, noise=noise, num_flow_layers=1, output_u=False)
    monkeypatch.setattr(tied_mixd_likelihood, "use_fused_path", lambda *_: False)
    plain = model(ids, noise=noise, num_flow_layers=1, output_u=False)
    for name in ("nelbo", "log_p_x_given_z", "log_p_z", "log_q_z"):
        torch.testing.assert_close(getattr(fast, name), getattr(plain, name), rtol=0, atol=1e-3)
