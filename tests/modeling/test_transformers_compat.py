"""What a GPT-2 user does with `transformers` works here or is refused with a reason: a tokenizer batch into
`generate`, `pipeline("text-generation")`, `AutoModelForCausalLM`, the `forward` keywords, and bf16 inference."""

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tests.helpers import REPO
from tests.helpers.modeling import randomize_, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM

pytestmark = pytest.mark.usefixtures("single_thread")

# the real GPT-2 tokenizer files, in the shared data folder beside the repository
GPT2_TOKENIZER = str(REPO.parent / "shared" / "data" / "gpt2-tokenizer")


@pytest.fixture(scope="module")
def model():
    return randomize_(TarFlowForCausalFlowLM(tiny_config(patch_size=2))).eval()


@pytest.fixture(scope="module")
def bpe_model():
    """A tiny model over GPT-2's 50257 BPE ids (two affine flows), to meet a real tokenizer."""
    config = TarFlowConfig(vocab_size=50257, latent_dim=2, hidden_size=16, num_attention_heads=2,
                           max_position_embeddings=16, maf_hidden_size=8,
                           flow_layers=[{"coupling": "affine", "num_layers": 1}] * 2)
    return randomize_(TarFlowForCausalFlowLM(config)).eval()


@pytest.fixture
def tokenizer():
    if not os.path.isdir(GPT2_TOKENIZER):
        pytest.skip(f"the GPT-2 tokenizer is not at {GPT2_TOKENIZER}")
    return AutoTokenizer.from_pretrained(GPT2_TOKENIZER)


# generate(**tokenizer(texts))


def test_generate_takes_a_tokenizer_batch_of_equal_length_prompts(bpe_model, tokenizer):
    batch = tokenizer(["Hello world", "Good day"], return_tensors="pt")
    out = bpe_model.generate(**batch, max_new_tokens=4, seed=0)
    assert out.shape == (2, 6) and torch.equal(out[:, :2], batch["input_ids"])


def test_left_padded_prompts_are_refused_saying_how_to_batch(bpe_model, tokenizer):
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    batch = tokenizer(["Hello world", "Hi"], padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match="padded prompts are not supported.*batch prompts of equal token length"):
        bpe_model.generate(**batch, max_new_tokens=4)


# pipeline("text-generation") and AutoModelForCausalLM


PIPELINE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["modeling_tarflow"] = None  # only the files copied next to the weights may serve
    from transformers import pipeline
    generator = pipeline("text-generation", model=sys.argv[1], trust_remote_code=True)
    default = generator("Hello world", return_tensors=True)[0]["generated_token_ids"]
    short = generator("Hello world", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    json.dump({"module": type(generator.model).__module__, "default_ids": list(map(int, default)),
               "short": short}, open(sys.argv[2], "w"))
""")


def test_text_generation_pipeline_continues_a_prompt_in_a_fresh_process(bpe_model, tokenizer, tmp_path):
    folder = tmp_path / "model"
    bpe_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    result = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(folder), str(tmp_path / "out.json")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["module"].startswith("transformers_modules")
    hello = tokenizer("Hello world")["input_ids"]
    assert len(out["default_ids"]) == 16 and out["default_ids"][:2] == hello, "default: fill the 16-token context"
    assert out["short"].startswith("Hello world") and len(tokenizer(out["short"])["input_ids"]) > 2


def test_saved_model_loads_as_auto_model_for_causal_lm(model, tmp_path):
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == auto_map["AutoModel"] == "modeling_tarflow.TarFlowForCausalFlowLM"
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), TarFlowForCausalFlowLM)


# forward keywords


def test_labels_equal_to_input_ids_and_an_all_ones_mask_change_nothing(model):
    ids, noise = torch.randint(0, 11, (2, 8)), torch.randn(2, 8, 3)
    out = model(ids, noise=noise, labels=ids.clone(), attention_mask=torch.ones_like(ids))
    assert torch.equal(out.loss, model(ids, noise=noise).loss)


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": torch.tensor([[1, 2, 3, -100]])}, "labels must equal input_ids .* no ignore index"),
    ({"labels": torch.tensor([[2, 2, 3, 4]])}, "labels must equal input_ids"),
    ({"attention_mask": torch.tensor([[0, 1, 1, 1]])}, "padded inputs are not supported"),
    ({"attention_mask": torch.ones(1, 6)}, "attention_mask must be a tensor shaped like input_ids"),
])
def test_labels_or_padding_that_cannot_be_honoured_are_errors(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(torch.tensor([[1, 2, 3, 4]]), **kwargs)


def test_an_unknown_forward_keyword_is_a_type_error(model):
    with pytest.raises(TypeError, match="unexpected keyword argument 'use_cahce'"):
        model(torch.tensor([[1, 2, 3, 4]]), use_cahce=False)


# bf16 inference: the network in bf16, the codebook and mixture math in float32


def test_bf16_forward_is_close_to_float32(model):
    half = copy.deepcopy(model).to(torch.bfloat16)
    ids, noise = torch.randint(0, 11, (4, 16)), torch.randn(4, 16, 3)
    out, reference = half(ids, noise=noise), model(ids, noise=noise)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.nelbo).all()
    assert out.loss.item() == pytest.approx(reference.loss.item(), rel=0.02)


@pytest.mark.parametrize("prompt", [None, torch.tensor([[1, 2, 3, 4]])], ids=["unconditional", "prompted"])
def test_bf16_generate_matches_float32_argmax_samples(model, prompt):
    half = copy.deepcopy(model).to(torch.bfloat16)
    noise = torch.randn(4, 8, 3)
    kwargs = dict(noise=noise, max_new_tokens=8, num_return_sequences=4, do_sample=False, seed=0)
    out, reference = half.generate(prompt, **kwargs), model.generate(prompt, **kwargs)
    assert out.shape == reference.shape and (out == reference).float().mean() >= 0.9
    assert half.generate(prompt, max_new_tokens=8, seed=0).shape[-1] == 8 + (0 if prompt is None else 4)
