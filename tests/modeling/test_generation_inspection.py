"""A look inside the flow: the latent after every inverse layer, its decoding, the App. G metrics, HTML and PNG."""

import pytest
import torch

from evaluation.inspection import decode_levels, edits_html, latent_metrics, level_names, write_flow_inspection

pytestmark = pytest.mark.usefixtures("single_thread")


def test_hidden_states_run_from_the_scaled_noise_to_the_decoded_latent(model):
    noise = torch.randn(2, 8, 3)
    out = model.generate(noise=noise, max_new_tokens=8, num_return_sequences=2, noise_temperature=0.8, do_sample=False,
                         output_hidden_states=True)
    assert len(out.hidden_states) == 4 and all(h.shape == (2, 8, 3) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[0], 0.8 * noise)
    levels = decode_levels(model, out.hidden_states)
    assert torch.equal(levels[-1], out.sequences), "the last level is z, which the sequences decode"


def test_prompted_hidden_states_cover_prompt_and_continuation(model):
    out = model.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=6, seed=0, output_hidden_states=True)
    assert out.sequences.shape == (1, 10) and all(h.shape == (1, 10, 3) for h in out.hidden_states)
    u = model.flow(out.hidden_states[-1]).u
    assert torch.allclose(u, out.hidden_states[0], atol=1e-5)


def test_metrics_follow_their_definitions():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]])               # one sequence, T = 3, d = 2
    shifted = h + torch.tensor([3.0, 4.0])
    metrics = latent_metrics([h, shifted])
    assert metrics["mean_l2_norm"]["mean"][0] == pytest.approx(4 / 3)
    assert metrics["mean_pairwise_cosine"]["mean"][0] == pytest.approx(-1 / 3)   # cosines 0, −1, 0
    # covariance of the centred rows: diag(1, 4/3) → PR = (7/3)² / (1 + 16/9)
    assert metrics["participation_ratio"]["mean"][0] == pytest.approx((7 / 3) ** 2 / (1 + 16 / 9))
    assert metrics["participation_ratio"]["mean"][1] == pytest.approx(metrics["participation_ratio"]["mean"][0])
    assert metrics["centroid_movement"]["mean"] == [pytest.approx(5.0)]


def test_edits_page_highlights_exactly_the_changed_tokens():
    page = edits_html([torch.tensor([[0, 1, 2]]), torch.tensor([[0, 5, 2]])], token_to_text="abcdef".__getitem__)
    assert "inverse layer 1: u = h^(1) → z = h^(0) (1 of 3 tokens changed)" in page
    assert "a<span class='input'>b</span>c" in page and "a<span class='output'>f</span>c" in page


def test_level_names_run_from_u_to_z():
    assert level_names(4) == ["u = h^(3)", "h^(2)", "h^(1)", "z = h^(0)"]


def test_inspection_files_are_written(model, tmp_path):
    pytest.importorskip("matplotlib")
    out = model.generate(max_new_tokens=8, num_return_sequences=3, seed=0, output_hidden_states=True)
    page, plot = write_flow_inspection(model, out, tmp_path, token_to_text="abcdefghijk".__getitem__)
    assert page.read_text().count("<h2>") == 3
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspection_needs_hidden_states(model, tmp_path):
    out = model.generate(max_new_tokens=4, seed=0, return_dict_in_generate=True)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        write_flow_inspection(model, out, tmp_path)
