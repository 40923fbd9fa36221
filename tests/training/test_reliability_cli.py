"""`training/run.py` as its documentation promises: every expected failure is one ``error:`` line and exit status 2,
found before any step is taken; a finished run is never replaced unasked; the model is exported (into
``<output_dir>/model``, exactly what ``--push_to_hub`` uploads) before anything optional runs."""

import gzip
import json

import pytest
from huggingface_hub.utils import filter_repo_objects

from tests.helpers import REPO
from tests.helpers.training import run_in_process, tiny_args

MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "README.md"}


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a refused run would have started its steps."""
    from training.trainer import Trainer

    def train(self):
        raise AssertionError("training started")

    monkeypatch.setattr(Trainer, "train", train)


def refused(argv, capsys) -> str:
    """The one ``error:`` line of a refused run (exit status 2, no traceback)."""
    status = run_in_process(argv, entry="cli")
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return errors[0]


def text_folder(folder, text: str):
    """A character dataset folder whose three split files hold `text`."""
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.txt").write_text(text * 200)
    return str(folder)


BAD_SETTINGS = {  # extra flags over a valid tiny run -> a fragment of the one error line
    "negative seed": (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    "beta1 above 1": (["--adam_beta1", "1.5"], "--adam_beta1 must be in [0, 1)"),
    "negative beta2": (["--adam_beta2", "-0.1"], "--adam_beta2 must be in [0, 1)"),
    "negative epsilon": (["--adam_epsilon", "-1"], "--adam_epsilon must be a finite number >= 0"),
    "negative width": (["--model_config", '{"hidden_size": -4}'], "--model_config: TarFlowConfig.hidden_size"),
    "zero patch": (["--model_config", '{"patch_size": 0}'], "--model_config patch_size must be a positive integer"),
    "layers not a list": (["--model_config", '{"flow_layers": "mixd"}'], "--model_config: TarFlowConfig.flow_layers"),
    "context below the block": (["--model_config", '{"max_position_embeddings": 8}'],
                                "--block_size 16 exceeds --model_config max_position_embeddings 8"),
    "block not in patches": (["--block_size", "15", "--model_config", '{"patch_size": 2}'],
                             "--block_size 15 must be a multiple of the patch size 2"),
    "samples beyond the context": (["--sample_length", "32"], "--sample_length 32 exceeds the model's context of 16"),
    "samples not in patches": (["--sample_length", "7", "--model_config", '{"patch_size": 2}'],
                               "--sample_length 7 must be a multiple of the patch size 2"),
    "zero sample length": (["--sample_length", "0"], "--sample_length >= 1"),
    "batch larger than the data": (["--per_device_train_batch_size", "1000"], "fewer than one batch of"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_a_bad_setting_is_one_error_line_before_training(case, tmp_path, capsys, no_training):
    extra, fragment = BAD_SETTINGS[case]
    assert fragment in refused(tiny_args(tmp_path / "run", *extra), capsys)


def test_the_quickstart_with_a_short_block_is_refused_before_training_not_after(tmp_path, capsys, no_training):
    error = refused(["--config", "quickstart", "--block_size", "64", "--output_dir", str(tmp_path / "run")], capsys)
    assert "--sample_length 128 exceeds the model's context of 64" in error


@pytest.mark.parametrize("text, shown", [("Hello world ", "'H'"), ("one\ntwo ", "'\\n'"), ("nul\0byte ", "'\\x00'")],
                         ids=["capitals", "newlines", "nul"])
def test_an_ordinary_text_file_names_the_file_and_the_flag(text, shown, tmp_path, capsys, no_training):
    data = text_folder(tmp_path / "data", text)
    error = refused(tiny_args(tmp_path / "run", "--dataset", data), capsys)
    assert str(tmp_path / "data" / "train.txt") in error and "--normalize_text8" in error and shown in error
    assert "text8_normalize()" not in error  # the Python API is not what a command-line user calls


def test_an_output_dir_that_is_a_file_or_not_writable_is_refused(tmp_path, capsys, monkeypatch, no_training):
    (tmp_path / "file").write_text("")
    assert "is a file, not a folder" in refused(tiny_args(tmp_path / "file"), capsys)
    assert "cannot create the folder" in refused(tiny_args(tmp_path / "file" / "run"), capsys)
    monkeypatch.setattr("training.checkpointing.os.access", lambda path, mode: False)  # as a non-root user sees it
    assert "is not writable" in refused(tiny_args(tmp_path / "read-only"), capsys)


# --- A finished run: refused, resumed or explicitly overwritten; its model folder is what is uploaded -----------

class RecordingHubApi:
    """Stands in for `HfApi` in `training.run`: a logged-in writer; records the upload, touches no network."""

    uploads: list = []

    def whoami(self):
        return {"name": "user", "orgs": [], "auth": {"accessToken": {"role": "write"}}}

    def create_repo(self, repo_id, **kwargs):
        pass

    def upload_folder(self, **kwargs):
        RecordingHubApi.uploads.append(kwargs)
        return "https://huggingface.co/user/tiny/commit/0"


def uploaded_files(upload: dict) -> set[str]:
    """What `upload_folder` sends for these arguments (its own filter of the folder's files)."""
    from pathlib import Path

    folder = Path(upload["folder_path"])
    files = [str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()]
    return set(filter_repo_objects(files, allow_patterns=upload.get("allow_patterns"),
                                   ignore_patterns=upload.get("ignore_patterns")))


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory):
    """A tiny run from an absolute dataset path into an absolute output folder holding a stray `.env`, pushed to
    the (patched) Hub."""
    import training.run

    output_dir = tmp_path_factory.mktemp("pushed") / "run"
    output_dir.mkdir()
    (output_dir / ".env").write_text("HF_TOKEN=secret\n")
    original, training.run.HfApi = training.run.HfApi, RecordingHubApi
    RecordingHubApi.uploads = []
    try:
        results = run_in_process(tiny_args(output_dir, "--push_to_hub", "user/tiny", "--dataset",
                                           str(REPO / "data" / "tiny-literary"), "--save_steps", "2", max_steps=2))
    finally:
        training.run.HfApi = original
    return output_dir, results, RecordingHubApi.uploads


def test_the_model_folder_is_exactly_what_is_uploaded(pushed_run):
    output_dir, results, uploads = pushed_run
    folder = output_dir / "model"
    (upload,) = uploads
    assert upload["folder_path"] == str(folder) and results["model_folder"] == str(folder)
    local = {path.name for path in folder.iterdir()}
    assert uploaded_files(upload) == local
    assert MODEL_FILES <= local and {name for name in local if not name.endswith(".py")} == MODEL_FILES
    beside = {path.name for path in output_dir.iterdir()}
    assert {"training.lock", "checkpoints", "metrics.jsonl", "results.json", "training_config.yaml", ".env",
            "model"} <= beside


def test_uploaded_files_hold_no_absolute_local_path(pushed_run):
    output_dir, _, (upload,) = pushed_run
    for name in uploaded_files(upload):
        text = (output_dir / "model" / name).read_text(errors="replace")
        for local in (str(output_dir.parent), str(REPO)):
            assert local not in text, (name, local)
    assert 'from_pretrained("user/tiny"' in (output_dir / "model" / "README.md").read_text()


def test_stray_files_in_the_model_folder_are_not_uploaded(tmp_path):
    from training.run import push_model_folder

    for name in ("config.json", "model.safetensors", "modeling_tarflow.py", ".env", "nohup.out", "notes.txt"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "tmpabc").mkdir()
    (tmp_path / "tmpabc" / "scratch.bin").write_text("x")
    RecordingHubApi.uploads = []
    push_model_folder(tmp_path, "user/tiny", api=RecordingHubApi())
    assert uploaded_files(RecordingHubApi.uploads[0]) == {"config.json", "model.safetensors", "modeling_tarflow.py"}


def test_a_new_run_on_a_finished_run_is_refused_naming_both_ways_on(pushed_run, capsys, no_training):
    output_dir, _, _ = pushed_run
    weights = (output_dir / "model" / "model.safetensors").read_bytes()
    error = refused(tiny_args(output_dir, max_steps=2), capsys)
    assert "already holds a training run" in error
    assert "--resume_from_checkpoint latest" in error and "--overwrite_output_dir" in error
    assert (output_dir / "model" / "model.safetensors").read_bytes() == weights


def test_overwrite_output_dir_replaces_the_earlier_run(tmp_path):
    from evaluation.training_logs import read_metrics

    run_in_process(tiny_args(tmp_path, "--num_samples", "0", "--save_steps", "3", max_steps=3))
    (tmp_path / "notes.txt").write_text("mine")  # not a run record: kept
    run_in_process(tiny_args(tmp_path, "--num_samples", "0", "--overwrite_output_dir", max_steps=2))
    assert sorted(read_metrics(tmp_path)) == [1, 2]  # the earlier run's steps are gone, not mixed in
    assert not (tmp_path / "checkpoints").exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_the_model_is_exported_before_samples_are_drawn(tmp_path, monkeypatch):
    from training.recipes import TarFlowRecipe

    def failing_sample(self, *args, **kwargs):
        raise RuntimeError("sampling failed")

    monkeypatch.setattr(TarFlowRecipe, "sample", failing_sample)
    with pytest.raises(RuntimeError, match="sampling failed"):
        run_in_process(tiny_args(tmp_path, max_steps=2))
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "model" / "README.md").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 2


def test_gzip_text_names_the_file_too(tmp_path, capsys, no_training):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.txt.gz").write_bytes(gzip.compress(b"Capital Letters " * 200))
    assert str(data / "train.txt.gz") in refused(tiny_args(tmp_path / "run", "--dataset", str(data)), capsys)
