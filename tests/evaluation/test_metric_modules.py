"""The Table 6 metrics as `evaluate` modules: loaded by path, they give the numbers of the harness's functions on
fixed inputs, each folder is self-contained (what the Hub would serve), and the documented one-liner scores any
list of strings."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
import subprocess
import sys
import textwrap

import evaluate
import numpy as np
import pytest

from evaluation import metrics
from tests.helpers import REPO
from tests.helpers.evaluation import char_tokenizer, save_causal_lm, tiny_gpt2

TEXTS = ["the cat sat on the mat<eos>and", "a quick brown fox", "jumps over<eos>the lazy dog<eos>"]
IDS = [[1, 2, 2, 3, 3, 3], [4, 4, 4, 4], [0, 1, 2, 3, 4, 5, 6, 7]]
# evaluation.gen_ppl.generative_perplexity, evaluation.entropy.sample_entropies and
# evaluation.mauve_score.mauve_from_features on these inputs, before the metrics were modules
GEN_PPL, GEN_PPL_TOKENS = 103.28843562502573, [22, 14, 21]
ENTROPIES = [1.0114042647073518, 0.0, 2.0794415416798357]
MAUVE = 0.9580421252620918


def features():
    rng = np.random.default_rng(3)
    return rng.normal(size=(60, 8)).astype(np.float32), (rng.normal(size=(60, 8)) + 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def reference():
    return tiny_gpt2(vocab_size=28, init_std=0.3), char_tokenizer(with_eos=True)


def test_gen_ppl_module_gives_the_harness_numbers(reference):
    model, tokenizer = reference
    gen_ppl = evaluate.load(str(REPO / "evaluation" / "metrics" / "gen_ppl"))
    result = gen_ppl.compute(predictions=TEXTS, model=model, tokenizer=tokenizer, context_size=8, batch_size=2)
    assert result["gen_ppl"] == pytest.approx(GEN_PPL, rel=1e-12) and result["per_sample_tokens"] == GEN_PPL_TOKENS


def test_entropy_module_gives_the_harness_numbers_from_ids_and_from_texts():
    entropy = metrics.load("sample_entropy")
    result = entropy.compute(predictions=IDS)
    assert result["per_sample"] == pytest.approx(ENTROPIES, rel=1e-12) and result["unit"] == "nats"
    assert result["mean"] == pytest.approx(sum(ENTROPIES) / 3)
    from_texts = entropy.compute(predictions=["abbccc", "dddd"], tokenizer=char_tokenizer())
    assert from_texts["per_sample"] == pytest.approx(ENTROPIES[:2])


def test_mauve_module_gives_the_harness_numbers_with_remdm_settings():
    p, q = features()
    result = metrics.load("remdm_mauve").compute(predictions=q.tolist(), references=p.tolist())
    assert result["mauve"] == pytest.approx(MAUVE, rel=1e-9)
    assert result["scaling_factor"] == 5 and result["num_buckets"] == 6


def test_each_metric_folder_loads_on_its_own_as_from_the_hub(tmp_path):
    """A copy of the folders outside the repository, loaded where the `evaluation` package cannot be imported."""
    for name in metrics.NAMES:
        shutil.copytree(REPO / "evaluation" / "metrics" / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    script = textwrap.dedent("""
        import sys
        sys.modules["evaluation"] = None
        import evaluate
        ids = evaluate.load("sample_entropy").compute(predictions=[[1, 2, 2, 3, 3, 3]])["mean"]
        mauve = evaluate.load("remdm_mauve").compute(predictions=[[0.0, 1.0]] * 10 + [[1.0, 0.0]] * 10,
                                                     references=[[1.0, 0.0]] * 20)["mauve"]
        evaluate.load("gen_ppl")
        print(ids, mauve)
    """)
    env = {**os.environ, "PYTHONPATH": "", "HF_HOME": str(tmp_path / "hf-home")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    entropy, mauve = map(float, done.stdout.split()[-2:])
    assert entropy == pytest.approx(ENTROPIES[0]) and 0 < mauve < 1


def test_the_documented_one_liner_scores_a_list_of_strings(reference, tmp_path, monkeypatch):
    from evaluation.gen_ppl import generative_perplexity

    folder = save_causal_lm(*reference, tmp_path / "reference")
    line = next(line for line in (REPO / "evaluation" / "README.md").read_text().splitlines()
                if line.startswith('print(metrics.load("gen_ppl")'))
    monkeypatch.chdir(tmp_path)
    from evaluation import metrics
    expression = line.removeprefix("print(").removesuffix(")")
    score = eval(expression.replace('"gpt2-large"', repr(folder)), {"metrics": metrics, "texts": TEXTS})
    assert score == pytest.approx(generative_perplexity(TEXTS, *reference).perplexity, rel=1e-12)
