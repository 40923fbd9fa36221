"""The evaluation commands as their documentation promises: every expected failure is one ``error:`` line and exit
status 2, and what can be checked before the scoring or sampling (the output file, the device, the reference
corpus, the data's characters) is checked before it; ``evaluation.report`` skips a malformed result and names a
malformed log."""

import json

import pytest
import torch

from evaluation import generative, likelihood, report
from evaluation.cli import run_command
from modeling_tarflow import TarFlowForCausalFlowLM
from tests.helpers.evaluation import char_tokenizer, save_causal_lm
from tests.helpers.modeling import randomize_, tiny_config


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    model = randomize_(TarFlowForCausalFlowLM(tiny_config(vocab_size=27, patch_size=2, max_position_embeddings=32)))
    return save_causal_lm(model.eval(), char_tokenizer(), tmp_path_factory.mktemp("tarflow") / "tiny")


@pytest.fixture
def nothing_expensive(monkeypatch):
    """Fail the test if a refused evaluation would have scored a block or drawn a sample."""
    def expensive(*args, **kwargs):
        raise AssertionError("scoring or sampling started")

    monkeypatch.setattr(likelihood, "score_blocks", expensive)
    monkeypatch.setattr(generative, "draw_samples", expensive)


def refused(main, argv, capsys) -> str:
    status = run_command(main, argv)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return errors[0]


def corpus(folder, train: str, valid: str):
    folder.mkdir()
    (folder / "train.txt").write_text(train)
    (folder / "valid.txt").write_text(valid)
    (folder / "test.txt").write_text(valid)
    return str(folder)


def bad_invocations(tmp_path):
    (tmp_path / "a-file").write_text("")
    return {  # name -> (command, flags after the model, fragment of the error line)
        "output is a folder": (likelihood.main, ["--data", "tiny-literary", "--output", str(tmp_path)], "is a folder"),
        "output under a file": (generative.main, ["--output", str(tmp_path / "a-file" / "g.json")],
                                "cannot be written"),
        "unknown device": (likelihood.main, ["--data", "tiny-literary", "--device", "gpu0"], "is not a torch device"),
        "capitals in --data": (likelihood.main, ["--data", corpus(tmp_path / "caps", "Abc " * 99, "Abc " * 99)],
                               "holds 1 kinds of characters outside the text8 alphabet"),
        "missing --reference_data": (generative.main, ["--reference_data", str(tmp_path / "nowhere"),
                                                       "--metrics", "entropy", "mauve"], "nowhere"),
        "short --reference_data": (generative.main, ["--reference_data", corpus(tmp_path / "short", "ab " * 99, "ab"),
                                                     "--metrics", "entropy", "mauve"], "fewer than one block"),
    }


@pytest.mark.parametrize("case", ["output is a folder", "output under a file", "unknown device", "capitals in --data",
                                  "missing --reference_data", "short --reference_data"])
def test_a_bad_invocation_is_one_error_line_before_any_scoring(case, model_folder, tmp_path, capsys,
                                                               nothing_expensive):
    main, flags, fragment = bad_invocations(tmp_path)[case]
    assert fragment in refused(main, [model_folder, *flags], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_before_loading(model_folder, capsys):
    assert "no CUDA device" in refused(likelihood.main, [model_folder, "--data", "tiny-literary", "--device", "cuda"],
                                       capsys)


def test_a_read_only_output_folder_is_refused_before_scoring(model_folder, tmp_path, capsys, monkeypatch,
                                                             nothing_expensive):
    monkeypatch.setattr("evaluation.cli.os.access", lambda path, mode: False)  # as a non-root user sees it
    error = refused(likelihood.main, [model_folder, "--data", "tiny-literary", "--output", str(tmp_path / "l.json")],
                    capsys)
    assert "cannot be written" in error


def test_the_text_error_names_the_file_not_the_python_api(model_folder, tmp_path, capsys, nothing_expensive):
    data = corpus(tmp_path / "lines", "one\ntwo " * 99, "one\ntwo " * 99)
    error = refused(likelihood.main, [model_folder, "--data", data], capsys)
    assert str(tmp_path / "lines" / "test.txt") in error and "--normalize_text8" in error
    assert "DataConfig(" not in error


def test_a_run_folder_given_as_the_model_points_at_its_model_subfolder(model_folder, tmp_path, capsys):
    import shutil

    shutil.copytree(model_folder, tmp_path / "run" / "model")
    error = refused(likelihood.main, [str(tmp_path / "run"), "--data", "tiny-literary"], capsys)
    assert "training run's output folder" in error and str(tmp_path / "run" / "model") in error


def test_report_skips_malformed_results_and_names_a_malformed_log(tmp_path, capsys):
    broken = {"truncated.json": '{"evaluation": "likelihood", "bou', "fields.json": json.dumps({"evaluation":
              "likelihood", "headline": {}}), "types.json": json.dumps({"evaluation": "generative", "samples": 3})}
    for name, text in broken.items():
        (tmp_path / name).write_text(text)
    text = report.main([str(tmp_path / name) for name in broken] + ["--output", str(tmp_path / "r.md")])
    assert all(name in text for name in broken) and "Skipped" in text
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\nnot json\n')
    error = refused(report.main, ["--logs", str(run), "--output", str(tmp_path / "r.md")], capsys)
    assert "metrics.jsonl line 2" in error
