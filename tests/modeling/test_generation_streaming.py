"""`generate` as `transformers` users drive it: streamers get each patch as soon as the first flow layer's inverse
(the last one run) has produced it, stopping criteria and EOS end the work early, and `pipeline("text-generation")`
takes an empty prompt, a streamer and `return_full_text=False`."""

import threading

import pytest
import torch
from tests.helpers.modeling import tiny_config
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer, TextStreamer, pipeline
from transformers.generation.streamers import BaseStreamer

from modeling_tarflow import TarFlowForCausalFlowLM
from training.tokenization_char import build_char_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

PATCHES = 8        # 16 tokens, P = 2
SPACE = 26         # the pad id of these tests: the character tokenizer has no special tokens


def char_model(first_direction: str = "l2r") -> TarFlowForCausalFlowLM:
    """Mix-d (first), Mix-1 (right to left), affine, over the 27 characters; seeded N(0, 0.3²) parameters."""
    layers = [{"coupling": "mixture_rosenblatt", "num_layers": 1, "direction": first_direction},
              {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 1, "direction": "r2l"},
              {"coupling": "affine", "num_layers": 1, "direction": "l2r"}]
    model = TarFlowForCausalFlowLM(tiny_config(vocab_size=27, patch_size=2, flow_layers=layers)).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def model():
    return char_model()


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


class RecordingStreamer(BaseStreamer):
    """Records every `put` with how many patches the first flow layer had inverted by then."""

    def __init__(self, counter=None):
        self.counter, self.puts, self.ended = counter, [], False

    def put(self, value):
        self.puts.append((self.counter.calls if self.counter else None, value.clone()))

    def end(self):
        self.ended = True


class InverseCounter:
    """Counts the calls of one coupling's inverse (the first flow layer's: one per patch)."""

    def __init__(self, monkeypatch, model):
        coupling = model.flow.layers[0].coupling
        inverse, self.calls = coupling.inverse, 0

        def counted(*args, **kwargs):
            self.calls += 1
            return inverse(*args, **kwargs)
        monkeypatch.setattr(coupling, "inverse", counted)


def test_each_patch_is_streamed_as_soon_as_the_first_layer_has_inverted_it(model, monkeypatch):
    counter = InverseCounter(monkeypatch, model)
    streamer = RecordingStreamer(counter)
    ids = model.generate(max_new_tokens=16, seed=0, streamer=streamer)
    assert [calls for calls, _ in streamer.puts] == list(range(PATCHES + 1)), "the (empty) prompt, then one per patch"
    assert streamer.puts[0][1].shape == (1, 0) and streamer.ended
    assert torch.equal(torch.cat([value for _, value in streamer.puts], dim=1), ids)


def test_with_a_right_to_left_first_layer_the_tokens_are_streamed_at_the_end(monkeypatch):
    model = char_model(first_direction="r2l")
    counter = InverseCounter(monkeypatch, model)
    streamer = RecordingStreamer(counter)
    ids = model.generate(max_new_tokens=16, seed=0, streamer=streamer, decoding="sequential")
    assert [calls for calls, _ in streamer.puts] == [0] + [PATCHES] * PATCHES
    assert torch.equal(torch.cat([value for _, value in streamer.puts], dim=1), ids)


def test_a_streamer_alone_changes_no_argmax_sample(model):
    plain = model.generate(max_new_tokens=16, seed=0, do_sample=False)
    assert torch.equal(model.generate(max_new_tokens=16, seed=0, do_sample=False,
                                      streamer=RecordingStreamer()), plain)


def test_text_streamers_print_and_iterate_the_decoded_text(model, tokenizer, capsys):
    prompt = tokenizer("to be", return_tensors="pt")["input_ids"][:, :4]
    ids = model.generate(prompt, max_new_tokens=12, seed=0, streamer=TextStreamer(tokenizer))
    assert capsys.readouterr().out.rstrip("\n") == tokenizer.decode(ids[0])
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    result = {}
    thread = threading.Thread(target=lambda: result.update(ids=model.generate(prompt, max_new_tokens=12, seed=0,
                                                                              streamer=streamer)))
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == tokenizer.decode(result["ids"][0, 4:])


class StopAfter(StoppingCriteria):
    def __init__(self, tokens: int):
        self.tokens = tokens

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.tokens)


def test_once_every_row_has_stopped_no_further_patch_is_inverted(model, monkeypatch):
    counter = InverseCounter(monkeypatch, model)
    out = model.generate(max_new_tokens=16, num_return_sequences=3, seed=0, pad_token_id=SPACE,
                         stopping_criteria=StoppingCriteriaList([StopAfter(5)]), return_dict_in_generate=True)
    assert counter.calls == 3 and out.decided_patches == 3
    assert (out.sequences[:, 5:] == SPACE).all() and out.sequences.shape == (3, 16)
    assert model.generate(max_new_tokens=16, seed=0, pad_token_id=SPACE, max_time=0.0,
                          return_dict_in_generate=True).decided_patches == 1


def test_a_stop_string_ends_its_row_after_the_string(model, tokenizer):
    never = StoppingCriteriaList([StopAfter(10 ** 6)])
    full = model.generate(max_new_tokens=16, seed=0, pad_token_id=SPACE, stopping_criteria=never)
    text = tokenizer.decode(full[0])
    stop = text[5:7]
    end = text.index(stop) + len(stop)
    out = model.generate(max_new_tokens=16, seed=0, pad_token_id=SPACE, stop_strings=[stop], tokenizer=tokenizer,
                         return_dict_in_generate=True)
    assert torch.equal(out.sequences[0, :end], full[0, :end]) and (out.sequences[0, end:] == SPACE).all()
    assert out.decided_patches == (end + 1) // 2


def test_rows_end_at_their_first_eos_and_the_work_stops_when_all_have(model, monkeypatch):
    plain = model.generate(max_new_tokens=16, num_return_sequences=4, seed=0, stopping_criteria=StoppingCriteriaList(
        [StopAfter(10 ** 6)]), pad_token_id=SPACE)
    eos = int(torch.mode(plain[:, :4].flatten()).values)            # a token drawn early in most rows
    counter = InverseCounter(monkeypatch, model)
    out = model.generate(max_new_tokens=16, num_return_sequences=4, seed=0, eos_token_id=eos, pad_token_id=SPACE,
                         output_hidden_states=True)
    ends = [int((row == eos).nonzero()[0, 0]) if (row == eos).any() else 15 for row in out.sequences]
    for row, end in zip(out.sequences, ends):
        assert (row[end + 1:] == SPACE).all()
    assert out.decided_patches == max(ends) // 2 + 1 == counter.calls < PATCHES
    assert torch.isnan(out.hidden_states[-1][:, -1]).all(), "the positions never inverted are NaN"


def test_stopping_without_a_pad_id_is_refused(model):
    with pytest.raises(ValueError, match="set pad_token_id"):
        model.generate(max_new_tokens=4, max_time=1.0)


# pipeline("text-generation")


@pytest.fixture(scope="module")
def generator(model, tokenizer):
    return pipeline("text-generation", model=model, tokenizer=tokenizer)


def test_the_pipeline_samples_from_an_empty_prompt(generator):
    text = generator("", max_new_tokens=8, seed=0)[0]["generated_text"]
    assert len(text) == 8


def test_the_pipeline_returns_only_the_new_text_without_the_full_text(generator):
    full = generator("to", max_new_tokens=8, seed=0)[0]["generated_text"]
    new = generator("to", max_new_tokens=8, seed=0, return_full_text=False)[0]["generated_text"]
    assert full == "to" + new and len(new) == 8


def test_the_pipeline_streams_what_it_returns(generator, tokenizer):
    streamer = TextIteratorStreamer(tokenizer)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=generator("to", max_new_tokens=8, seed=0,
                                                                         streamer=streamer)))
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == result["out"][0]["generated_text"]
