"""The report: result JSONs → Markdown tables in the layout of Tables 2 and 6; training logs → a PNG of curves."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
import json
from pathlib import Path

import pytest

from evaluation import generative, likelihood, report
from evaluation.loading import LoadedModel
from evaluation.training_logs import read_training_log
from tests.helpers.evaluation import NoisyUniformLatentModel, char_tokenizer, save_causal_lm, tiny_gpt2, uniform_gpt2

LOG_ROWS = [{"step": 10, "loss": 3.0, "bpc": 4.3, "tokens_per_second": 900.0},
            {"step": 20, "loss": 2.5, "bpc": 3.6, "tokens_per_second": 950.0, "eval_bpc": 3.8}]


@pytest.fixture
def results(monkeypatch, tmp_path):
    """A latent-model and a causal-LM likelihood result, a generative result with a Data row, and a benchmark."""
    folder = save_causal_lm(uniform_gpt2(), char_tokenizer(), tmp_path / "uniform-ar")
    likelihood.main([folder, "--data", "tiny-literary", "--max_blocks", "4", "--output", str(tmp_path / "ar.json")])
    lm = save_causal_lm(tiny_gpt2(vocab_size=28, bos_token_id=27), char_tokenizer(with_eos=True), tmp_path / "lm")
    generative.main([lm, "--num_samples", "20", "--sample_length", "16", "--reference_model", lm, "--featurizer", lm,
                     "--reference_data", "tiny-literary", "--score_references", "--output", str(tmp_path / "g.json")])
    loaded = LoadedModel(NoisyUniformLatentModel(noise_std=1.0), char_tokenizer(), "fake", "fake", "latent")
    monkeypatch.setattr(likelihood, "load_evaluated_model", lambda *args, **kwargs: loaded)
    likelihood.main(["fake", "--data", "tiny-literary", "--block_size", "32", "--max_blocks", "4",
                     "--num_z_samples", "8", "--iw_k", "1", "8", "--output", str(tmp_path / "latent.json")])
    (tmp_path / "forward.json").write_text(json.dumps({"training_step": {"tokens_per_second": 1.0}}))
    return sorted(str(path) for path in tmp_path.glob("*.json"))


def write_training_logs(folder) -> list[str]:
    """The same curve as training_log.jsonl (in a run folder) and as a CSV file."""
    run = folder / "run-a"
    run.mkdir()
    (run / "training_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in LOG_ROWS))
    with open(folder / "run-b.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "loss", "bpc", "tokens_per_second", "eval_bpc"])
        writer.writeheader()
        writer.writerows(LOG_ROWS)
    return [str(run), str(folder / "run-b.csv")]


def test_report_has_both_tables_and_a_plot(results, tmp_path):
    logs = write_training_logs(tmp_path)
    output = tmp_path / "report" / "report.md"
    text = report.main([*results, "--logs", *logs, "--output", str(output)])
    assert "Table 2" in text and "Table 6" in text
    assert "| uniform-ar | gpt2 | tiny-literary test | = 4.755 |" in text  # exact NLL of a uniform model
    assert "| latent | tarflow | tiny-literary test | ≤ " in text and "K=8: ≤ " in text
    latent_row = next(line for line in text.splitlines() if line.startswith("| latent |"))
    assert latent_row.count(" ± ") == 2 and "| 4 of " in latent_row  # ELBO and K = 8, each with its error
    assert "| Data (tiny-literary validation) | 20 |" in text
    assert "forward.json" in text.split("Skipped")[1]
    assert (tmp_path / "report" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "![training curves](training_curves.png)" in text


def test_by_default_the_report_shows_the_users_own_results_not_the_shipped_ones(results, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder, result in (("outputs/evaluation", "ar.json"), ("bench/results", "g.json")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "result.json").write_text((tmp_path / result).read_text())
    text = report.main([])
    assert text.count("| uniform-ar |") == 1 and "Table 6" not in text  # ar.json only, not g.json
    assert (tmp_path / "outputs" / "evaluation" / "report.md").is_file()


def without_standard_errors(record):
    if isinstance(record, dict):
        return {key: without_standard_errors(value) for key, value in record.items() if key != "standard_error"}
    return record


def test_a_result_written_before_standard_errors_were_recorded_is_shown_without_them():
    shipped = json.loads(Path(report.__file__).parent.parent.joinpath(
        "bench", "results", "eval_quickstart_quick_tarflow_likelihood.json").read_text())
    row = report.likelihood_row(without_standard_errors(shipped))
    assert row[3].startswith("≤ 2.") and "±" not in " ".join(row)


def test_jsonl_and_csv_logs_give_the_same_curves(tmp_path):
    run, csv_log = write_training_logs(tmp_path)
    from_jsonl, from_csv = read_training_log(run), read_training_log(csv_log)
    assert from_jsonl == from_csv
    assert from_jsonl["bpc"] == [(10, 4.3), (20, 3.6)] and from_jsonl["eval_bpc"] == [(20, 3.8)]


def test_tensorboard_event_files_are_read(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        for row in LOG_ROWS:
            writer.add_scalar("train/loss", row["loss"], row["step"])
    curves = read_training_log(tmp_path)
    assert [step for step, _ in curves["train/loss"]] == [10, 20]
    assert curves["train/loss"][1][1] == pytest.approx(2.5)


def test_mauve_from_few_samples_says_beside_the_number_that_it_is_noise():
    assert report.mauve_cell({"mauve": 0.0123, "num_samples": 48, "num_references": 48}) == \
        "0.012 (noise at 48 samples)"
    assert report.mauve_cell({"mauve": 0.5, "num_samples": 5000, "num_references": 5000}) == "0.500"
    assert report.mauve_cell({}) == "–"


def write_run(folder, model: str, steps: int, seconds: float, rows=()) -> str:
    folder.mkdir(parents=True)
    summary = {"model": model, "steps": steps, "train_seconds": seconds, "num_parameters": 1000,
               "validation": {"loss": 1.7, "bpc": 2.45}}
    (folder / "results.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder)


def plateau_curve() -> list[dict]:
    """A loss that falls fast to 2.3, stays there for steps 200-1000, then falls again; stage 2 starts at 1200."""
    rows = [{"step": 1200, "stage/index": 2}]
    for step in range(20, 1600, 20):
        loss = 3.0 - step / 300 if step < 200 else 2.3 - 0.0002 * (step - 200) / 20 if step < 1000 else \
            2.292 - (step - 1000) / 1000
        rows.append({"step": step, "train/loss": loss})
    return rows


def test_the_early_plateau_is_found_where_the_loss_stays_near_one_level():
    from evaluation.training_logs import early_plateau

    points = [(row["step"], row["train/loss"]) for row in plateau_curve() if "train/loss" in row]
    start, end = early_plateau(points)
    assert 200 <= start <= 280 and 940 <= end <= 1040
    assert early_plateau([(step, 3.0 - step / 1000) for step in range(0, 2000, 20)]) is None  # falls throughout
    with pytest.raises(ValueError, match="max_fall"):
        early_plateau(points, max_fall=0)


def test_the_report_tables_the_runs_adds_the_baseline_beside_them_and_says_how_it_was_trained(tmp_path):
    tarflow = write_run(tmp_path / "quickstart-tarflow", "tarflow", 5600, 250.0, plateau_curve())
    write_run(tmp_path / "quickstart-gpt2", "gpt2", 5600, 180.0, LOG_ROWS)
    text = report.main(["--logs", tarflow, "--output", str(tmp_path / "report.md")])
    assert "| quickstart-tarflow | tarflow | 5,600 | 250 s |" in text and "| quickstart-gpt2 | gpt2 | 5,600 |" in text
    assert "same 5,600 optimizer steps as TarFlowLM (equal steps, not equal wall-clock" in text
    runs = [("a", {"model": "tarflow", "steps": 5600, "train_seconds": 250.0}),
            ("b", {"model": "gpt2", "steps": 1760, "train_seconds": 240.0})]
    assert "same wall-clock time" in report.baseline_sentence(runs)


def test_the_curves_mark_the_stages_and_the_early_plateau(tmp_path, monkeypatch):
    marks = []
    monkeypatch.setattr("matplotlib.axes.Axes.axvline", lambda axis, step, **kwargs: marks.append(("stage", step)))
    monkeypatch.setattr("matplotlib.axes.Axes.axvspan", lambda axis, start, end, **kwargs: marks.append(
        ("plateau", start, end)))
    curves = read_training_log(write_run(tmp_path / "run-tarflow", "tarflow", 1600, 60.0, plateau_curve()))
    report.plot_training_curves({"run": curves}, tmp_path / "curves.png", metrics=("loss",))
    assert ("stage", 1200) in marks and [mark[0] for mark in marks].count("plateau") == 1
