"""Every ``python`` block of the README, of ``docs/*.md``, of ``evaluation/README.md`` and of the model card runs as
written, in a fresh namespace, from an empty working directory.

A block runs on its own unless the prose just before it says that it continues the previous block (`CONTINUES`);
then the two run as one program. Blocks that load the model of the README's main command
(`QUICKSTART_FOLDER`) get a tiny model trained here in seconds, with the quickstart's context and layer layout,
in its place, and the Hub's reference LM (`REFERENCE_LM`, unreachable offline) becomes a tiny GPT-2 saved here:
those two names are the only substitutions made, so every other line, sizes included, is what runs.
"""

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers.training import run_in_process, tiny_args

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", *sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("docs/*.md")),
             "evaluation/README.md"]
QUICKSTART_FOLDER = "outputs/quickstart-tarflow"
"""Where `accelerate launch training/run.py --config quickstart` writes the model, as the snippets load it."""
REFERENCE_LM = '"gpt2-large"'
"""The Hub id of the reference LM the evaluation snippets score text under."""
CONTINUES = "continues the previous block"
FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


@dataclass
class Program:
    document: str
    first_line: int
    code: str

    @property
    def name(self) -> str:
        return f"{self.document}:{self.first_line}"


def programs(document: str, text: str) -> list[Program]:
    """The document's python blocks, each joined to the one before when the prose between them says
    `CONTINUES`."""
    found, previous_end = [], 0
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 2
        if found and CONTINUES in text[previous_end:match.start()].lower():
            found[-1].code += "\n" + match.group(1)
        else:
            found.append(Program(document, line, match.group(1)))
        previous_end = match.end()
    return found


def documented_programs() -> list[Program]:
    return [program for document in DOCUMENTS
            for program in programs(document, ROOT.joinpath(document).read_text(encoding="utf-8"))]


def run_program(program: Program, substitutions: dict[str, str]) -> str:
    """Execute the program in a fresh namespace on one thread; returns what it printed."""
    code = program.code
    for literal, replacement in substitutions.items():
        code = code.replace(literal, replacement)
    printed, threads = io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, program.name, "exec"), {"__name__": "__snippet__"})
    finally:
        torch.set_num_threads(threads)
    return printed.getvalue()


@pytest.fixture(scope="module")
def quickstart_stand_in(tmp_path_factory) -> Path:
    """A run folder as the main command writes it (its model in `model/`; quickstart layout, context 128), trained
    for 6 steps."""
    folder = tmp_path_factory.mktemp("quickstart-tarflow")
    run_in_process(tiny_args(folder, "--block_size", "128", "--num_samples", "2", "--sample_length", "16"))
    return folder


@pytest.fixture(scope="module")
def reference_lm_stand_in(tmp_path_factory) -> str:
    """A tiny GPT-2 over the character tokenizer, saved as a causal-LM folder."""
    from tests.helpers.evaluation import char_tokenizer, save_causal_lm, tiny_gpt2

    return save_causal_lm(tiny_gpt2(vocab_size=28), char_tokenizer(with_eos=True),
                          tmp_path_factory.mktemp("reference-lm"))


@pytest.fixture
def in_empty_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))  # as after `pip install -e .`, from any directory
    return tmp_path


def test_the_documents_hold_the_blocks_this_test_runs():
    names = {program.document for program in documented_programs()}
    assert {"README.md", "docs/generation.md", "docs/coming-from-gpt2.md"} <= names
    assert any(QUICKSTART_FOLDER in program.code for program in documented_programs())


def test_programs_join_a_block_to_the_previous_one_only_when_the_prose_says_so():
    text = ("a\n```python\nx = 1\n```\nThis continues the previous block:\n```python\ny = x\n```\n"
            "b\n```python\nz = 2\n```\n")
    assert [program.code for program in programs("doc.md", text)] == ["x = 1\n\ny = x\n", "z = 2\n"]


@pytest.mark.parametrize("program", documented_programs(), ids=lambda program: program.name)
def test_every_documented_block_runs_as_written(program, quickstart_stand_in, reference_lm_stand_in,
                                                in_empty_directory):
    printed = run_program(program, {QUICKSTART_FOLDER: str(quickstart_stand_in),
                                    REFERENCE_LM: repr(reference_lm_stand_in)})
    assert printed.strip() or "import" in program.code.split("\n", 1)[0], f"{program.name} prints nothing"


def test_the_model_cards_block_runs_from_any_directory_and_prints_the_cards_samples(quickstart_stand_in,
                                                                                    in_empty_directory):
    card = quickstart_stand_in.joinpath("model", "README.md").read_text(encoding="utf-8")
    (program,) = programs("model card", card)
    printed = run_program(program, {})
    samples = [line.removeprefix("> ") for line in card.splitlines() if line.startswith("> ")]
    assert len(samples) == 2 and all(repr(sample) in printed for sample in samples), (samples, printed)


def test_the_pipeline_batches_prompts_of_equal_length_once_its_tokenizer_has_a_pad_token(quickstart_stand_in):
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(quickstart_stand_in / "model"), trust_remote_code=True)
    generator.tokenizer.pad_token = " "
    prompts = ["the meaning of life is ", "once upon a time there "]
    batched = generator(prompts, max_new_tokens=8, batch_size=2, seed=0)
    assert [row[0]["generated_text"][:23] for row in batched] == prompts  # spaces survive decoding
    with pytest.raises(ValueError, match="attention_mask"):
        generator(["a b ", "a longer prompt "], max_new_tokens=8, batch_size=2)
