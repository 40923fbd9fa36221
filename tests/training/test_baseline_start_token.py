"""The GPT-2 baseline's start token: BOS, else EOS, else a space that the vocabulary really has."""

from types import SimpleNamespace

from evaluation.causal_lm import start_token_id as causal_lm_start_token_id


def start_token_id(tokenizer):
    return causal_lm_start_token_id(tokenizer, allow_space=True)


def tokenizer(bos=None, eos=None, unk=None, space=None):
    return SimpleNamespace(bos_token_id=bos, eos_token_id=eos, unk_token_id=unk,
                           convert_tokens_to_ids=lambda token: space if space is not None else unk)


def test_gpt2_tokenizer_whose_unk_is_its_bos_starts_with_endoftext():
    # GPT-2 BPE: <|endoftext|> (50256) is BOS, EOS and UNK
    assert start_token_id(tokenizer(bos=50256, eos=50256, unk=50256)) == 50256


def test_eos_when_there_is_no_bos():
    assert start_token_id(tokenizer(eos=7, unk=0)) == 7


def test_space_of_a_character_vocabulary():
    assert start_token_id(tokenizer(space=0)) == 0


def test_a_missing_space_is_not_taken_for_one():
    assert start_token_id(tokenizer(unk=3)) is None
