"""Speed work never changes what is sampled: ids under a fixed seed equal reference ids saved from the plain
(uncompiled, bracketed-Newton) sampler for tiny seeded models, the compiled coupling inverse equals the eager one,
and `decoding="auto"` follows its rule."""

import pytest
import torch
from tests.helpers.modeling import tiny_config

from modeling_tarflow import TarFlowForCausalFlowLM
from modeling_tarflow import inversion as inversion_module

pytestmark = pytest.mark.usefixtures("single_thread")

MAF_LAYERS = [{"coupling": "mixture_rosenblatt", "num_layers": 1},
              {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 1},
              {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 1}]

# generate(max_new_tokens=16, num_return_sequences=batch, seed=5, decoding=..., jacobi_block_size=4) of
# `seeded_model` by the reference sampler; "mixed" is tiny_config's Mix-d, Mix-1 (MAF), affine stack.
REFERENCE_IDS = {
    "maf P=1 batch=1 sequential": [[4, 4, 1, 7, 10, 8, 4, 8, 8, 4, 8, 3, 4, 7, 4, 4]],
    "maf P=2 batch=3 sequential": [
        [4, 4, 9, 4, 4, 3, 4, 2, 4, 8, 4, 4, 4, 8, 9, 4],
        [8, 1, 4, 4, 4, 4, 9, 4, 4, 4, 6, 4, 6, 5, 7, 4],
        [0, 4, 4, 6, 7, 0, 4, 2, 4, 4, 4, 3, 1, 4, 7, 4],
    ],
    "mixed P=2 batch=1 jacobi": [[4, 4, 1, 4, 4, 4, 6, 4, 8, 8, 8, 4, 10, 4, 3, 4]],
    "mixed P=2 batch=3 sequential": [
        [4, 4, 9, 4, 4, 4, 10, 4, 10, 8, 10, 4, 5, 4, 10, 4],
        [5, 4, 6, 4, 5, 4, 9, 4, 4, 4, 5, 4, 6, 4, 7, 4],
        [0, 4, 10, 4, 7, 4, 4, 4, 10, 4, 3, 4, 1, 4, 10, 4],
    ],
}


def seeded_model(layers: str, patch_size: int) -> TarFlowForCausalFlowLM:
    """Every parameter drawn from a seeded N(0, 0.3²), whatever the initialisation: no flow is the identity."""
    config = tiny_config(patch_size=patch_size, **({"flow_layers": MAF_LAYERS} if layers == "maf" else {}))
    model = TarFlowForCausalFlowLM(config).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def sample(model, batch_size: int, **settings):
    return model.generate(max_new_tokens=16, num_return_sequences=batch_size, seed=5, jacobi_block_size=4,
                          **settings)


@pytest.mark.parametrize("case", sorted(REFERENCE_IDS))
def test_sampled_ids_under_a_fixed_seed_are_those_of_the_sampler_before_the_speed_work(case):
    layers, patch, batch, decoding = case.split()
    model = seeded_model(layers, int(patch.split("=")[1]))
    assert sample(model, int(batch.split("=")[1]), decoding=decoding).tolist() == REFERENCE_IDS[case]


@pytest.mark.parametrize("decoding", ["sequential", "jacobi"])
def test_compiled_coupling_inverse_gives_the_eager_sample(decoding):
    """The "eager" backend runs the same TorchDynamo capture as "inductor" without generating code (seconds)."""
    model = seeded_model("maf", 2)
    eager = sample(model, 2, decoding=decoding, output_hidden_states=True)
    compiled = sample(model, 2, decoding=decoding, output_hidden_states=True, compile_backend="eager")
    assert torch.equal(compiled.sequences, eager.sequences)
    assert torch.allclose(compiled.hidden_states[-1], eager.hidden_states[-1], rtol=0, atol=1e-5)


def test_patches_the_compiled_root_finder_leaves_unconverged_are_solved_again_eagerly(monkeypatch):
    monkeypatch.setattr(inversion_module, "COMPILED_ROOT_ITERATIONS", 1)   # one Newton step: most entries NaN
    model = seeded_model("maf", 1)
    eager = sample(model, 1, decoding="sequential", output_hidden_states=True)
    compiled = sample(model, 1, decoding="sequential", output_hidden_states=True, compile_backend="eager")
    assert torch.equal(compiled.sequences, eager.sequences)
    assert torch.allclose(compiled.hidden_states[-1], eager.hidden_states[-1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_size, settings, chosen", [
    (1, {}, "jacobi"),                                      # batch 1: per-step overhead dominates
    (2, {}, "sequential"),                                  # larger batches: arithmetic dominates
    (3, {"jacobi_max_batch_size": 4}, "jacobi"),
    (1, {"jacobi_max_batch_size": 0}, "sequential"),
    (1, {"decoding": "sequential"}, "sequential"),          # an explicit choice is kept
    (4, {"decoding": "jacobi"}, "jacobi"),
])
def test_auto_decoding_is_jacobi_up_to_jacobi_max_batch_size_and_sequential_beyond(batch_size, settings, chosen):
    model = seeded_model("mixed", 2)
    out = model.generate(max_new_tokens=4, num_return_sequences=batch_size, seed=0, return_dict_in_generate=True,
                         **settings)
    assert out.decoding == chosen
    explicit = model.generate(max_new_tokens=4, num_return_sequences=batch_size, seed=0,
                              **{**settings, "decoding": chosen})
    assert torch.equal(out.sequences, explicit)
