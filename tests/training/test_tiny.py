"""Training runs in this process on tiny models: progressive stages, NaN handling, the exported folder, the card."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.training import TINY_MODEL, run_in_process, tiny_args


def checkpoint_tensors(output_dir, step: int) -> tuple[dict, dict]:
    """(trained weights, EMA weights) stored in ``checkpoint-<step>``."""
    folder = output_dir / "checkpoints" / f"checkpoint-{step}"
    ema = load_file(folder / "ema.safetensors")
    return load_file(folder / "model.safetensors"), {k.removeprefix("module."): v for k, v in ema.items()
                                                      if k != "n_averaged"}


def subset(tensors: dict, prefix: str) -> dict:
    return {name: tensor for name, tensor in tensors.items() if name.startswith(prefix)}


def assert_same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys() and left
    for name in left:
        assert torch.equal(left[name], right[name]), name


@pytest.fixture(scope="module")
def progressive_run(tmp_path_factory):
    """Three stages of 3 steps (flow layers 1, 2, 3), a checkpoint after every step."""
    output_dir = tmp_path_factory.mktemp("progressive")
    results = run_in_process(tiny_args(output_dir, "--save_steps", "1", "--save_total_limit", "20",
                                       max_steps=9, stages=(1, 2, 3)))
    return output_dir, results


def test_new_stage_starts_where_the_previous_one_ended(progressive_run):
    from evaluation.training_logs import read_metrics

    output_dir, _ = progressive_run
    metrics = read_metrics(output_dir)
    boundaries = {step: values for step, values in metrics.items() if "stage/loss_before" in values}
    assert sorted(boundaries) == [3, 6]
    for values in boundaries.values():  # the added layer is the identity: same NELBO, same noise
        assert values["stage/loss_after"] == pytest.approx(values["stage/loss_before"], rel=1e-6, abs=1e-6)


def test_the_log_records_the_nelbo_parts_and_where_each_stage_starts(progressive_run):
    from evaluation.training_logs import read_metrics

    metrics = read_metrics(progressive_run[0])
    starts = {step: (row["stage/index"], row["stage/num_flow_layers"], row["stage/num_frozen_flow_layers"])
              for step, row in metrics.items() if "stage/index" in row}
    assert starts == {3: (2, 2, 1), 6: (3, 3, 2)}
    logged = [row for row in metrics.values() if "train/loss" in row]
    assert logged
    for row in logged:  # Eq. 3: NELBO = −log p(x|z) − log p(z) + log q(z|x), each nats per token
        parts = row["train/neg_log_p_x_given_z"] + row["train/neg_log_p_z"] + row["train/log_q_z"]
        assert parts == pytest.approx(row["train/loss"], rel=1e-5, abs=1e-5)


def test_layers_not_yet_added_do_not_move(progressive_run):
    output_dir, _ = progressive_run
    first_step, stage_one_end = checkpoint_tensors(output_dir, 1)[0], checkpoint_tensors(output_dir, 3)[0]
    for layer in (1, 2):
        assert_same(subset(first_step, f"flow.layers.{layer}."), subset(stage_one_end, f"flow.layers.{layer}."))
    stage_two_end = checkpoint_tensors(output_dir, 6)[0]
    assert_same(subset(first_step, "flow.layers.2."), subset(stage_two_end, "flow.layers.2."))


def test_frozen_layers_keep_their_averaged_weights_in_later_stages(progressive_run):
    output_dir, _ = progressive_run
    _, ema_stage_one = checkpoint_tensors(output_dir, 3)
    _, ema_stage_two = checkpoint_tensors(output_dir, 6)
    final, final_ema = checkpoint_tensors(output_dir, 9)
    for prefix in ("codebook.", "flow.layers.0."):  # frozen from step 3 on, at their EMA values of step 3
        assert_same(subset(final, prefix), subset(ema_stage_one, prefix))
        assert_same(subset(final_ema, prefix), subset(ema_stage_one, prefix))
    assert_same(subset(final, "flow.layers.1."), subset(ema_stage_two, "flow.layers.1."))
    trained_stage_two, _ = checkpoint_tensors(output_dir, 6)
    added_last = subset(final, "flow.layers.2."), subset(trained_stage_two, "flow.layers.2.")
    assert any(not torch.equal(added_last[0][name], added_last[1][name]) for name in added_last[0])


def test_exported_folder_loads_with_auto_classes(progressive_run):
    from transformers import AutoModel, AutoTokenizer

    output_dir, results = progressive_run
    model = AutoModel.from_pretrained(output_dir / "model", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(output_dir / "model")  # no prompt: this process imported modeling_tarflow
    assert type(model).__name__ == "TarFlowForCausalFlowLM" and len(tokenizer) == 27
    ids = tokenizer("the cat sat on a mat", return_tensors="pt")["input_ids"][:, :16]
    assert torch.isfinite(model(ids).loss)
    assert results["steps"] == 9 and math.isfinite(results["validation"]["bpc"])
    assert json.loads((output_dir / "results.json").read_text())["validation"] == results["validation"]


def test_model_card_states_data_steps_and_metrics(progressive_run):
    from huggingface_hub import ModelCard

    output_dir, results = progressive_run
    card = ModelCard.load(output_dir / "model" / "README.md")
    assert card.data.model_name == "quickstart-tarflow"
    assert card.data.eval_results[0].metric_type == "bpc"
    assert card.data.eval_results[0].metric_value == round(results["validation"]["bpc"], 4)
    for fact in ("for 9 optimizer steps", "tiny-literary", "unigram entropy", "stage 3: steps 6-8"):
        assert fact in card.text


def test_push_to_hub_uploads_the_model_folder_without_run_state(progressive_run):
    from huggingface_hub.utils import filter_repo_objects

    from training.run import push_model_folder

    class RecordingHubApi:  # stands in for HfApi: records what would be sent, touches no network
        def __init__(self):
            self.calls = []

        def create_repo(self, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
            return "https://huggingface.co/user/tiny/commit/0"

    output_dir, _ = progressive_run
    folder = output_dir / "model"
    api = RecordingHubApi()
    assert push_model_folder(folder, "user/tiny", api=api).endswith("/commit/0")
    (_, repo, _), (_, uploaded_repo, upload) = api.calls
    assert repo == uploaded_repo == "user/tiny" and upload["folder_path"] == str(folder)
    files = [str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()]
    sent = set(filter_repo_objects(files, allow_patterns=upload.get("allow_patterns"),
                                   ignore_patterns=upload.get("ignore_patterns")))
    assert {"config.json", "model.safetensors", "modeling_tarflow.py", "tokenizer.json", "README.md"} <= sent
    assert not any(name.startswith(("checkpoints/", "logs/")) or name == "results.json" for name in sent)


class FakeHubApi:
    """Answers `whoami` like the Hub, for an account `name` with a token of `role`."""

    def __init__(self, name="user", role="write", orgs=()):
        self.identity = {"name": name, "orgs": [{"name": org} for org in orgs],
                         "auth": {"accessToken": {"role": role}}}

    def whoami(self):
        return self.identity


def test_push_to_hub_is_checked_before_training(tmp_path):
    from training.errors import AssetUnavailableError
    from training.run import check_hub_access

    with pytest.raises(AssetUnavailableError, match="--push_to_hub user/tiny: cannot reach the Hugging Face Hub"):
        run_in_process(tiny_args(tmp_path, "--push_to_hub", "user/tiny"))  # HF_HUB_OFFLINE=1 in the tests
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
    assert check_hub_access("team/tiny", FakeHubApi(orgs=["team"])) == "user"
    assert check_hub_access("tiny", FakeHubApi()) == "user"
    with pytest.raises(AssetUnavailableError, match="cannot write to 'someone'"):
        check_hub_access("someone/tiny", FakeHubApi())
    with pytest.raises(AssetUnavailableError, match="read access"):
        check_hub_access("user/tiny", FakeHubApi(role="read"))


def test_a_pushed_model_card_shows_the_repo_id(progressive_run):
    import yaml
    from transformers import AutoModel

    from training.run import build_model_card
    from training.run import architecture_summary

    output_dir, results = progressive_run
    settings = yaml.safe_load((output_dir / "training_config.yaml").read_text())
    model = AutoModel.from_pretrained(output_dir / "model", trust_remote_code=True)
    card = build_model_card(results, {**settings, "push_to_hub": "user/tiny"}, architecture_summary(model))
    assert 'AutoModel.from_pretrained("user/tiny", trust_remote_code=True)' in card.text
    assert f'from_pretrained("{output_dir}"' not in card.text


def test_the_saved_tokenizer_loads_without_a_prompt_and_knows_the_context(progressive_run):
    """In a fresh process without this package imported, as the model card writes it."""
    import subprocess
    import sys

    output_dir, _ = progressive_run
    script = (f"from transformers import AutoTokenizer\n"
              f"t = AutoTokenizer.from_pretrained({str(output_dir / 'model')!r}, trust_remote_code=True)\n"
              "ids = t(['the cat sat on the mat ' * 3, 'a dog'], truncation=True)['input_ids']\n"
              "print(type(t).__name__, t.model_max_length, [len(row) for row in ids], repr(t.decode(ids[1])))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["TokenizersBackend", "16", "[16,", "5]", "'a", "dog'"]
    assert "custom code" not in done.stderr and "model of type" not in done.stderr, done.stderr


def test_a_refused_resume_names_the_differences_and_leaves_the_run_untouched(progressive_run, tmp_path):
    import shutil

    from training.errors import CheckpointError

    output_dir, _ = progressive_run
    shutil.copytree(output_dir / "checkpoints" / "checkpoint-3", tmp_path / "checkpoints" / "checkpoint-3")
    shutil.copy(output_dir / "training_config.yaml", tmp_path)
    before = (tmp_path / "training_config.yaml").read_bytes()
    args = tiny_args(tmp_path, "--save_steps", "1", "--save_total_limit", "20", "--resume_from_checkpoint", "latest",
                     max_steps=9, stages=(1, 2, 3))
    heads = {**TINY_MODEL, "num_attention_heads": 4}  # the same tensor shapes
    args[args.index("--model_config") + 1] = json.dumps(heads)
    with pytest.raises(CheckpointError, match="model_config.num_attention_heads: 2 in the checkpoint, 4 now"):
        run_in_process(args + ["--seed", "7"])
    with pytest.raises(CheckpointError, match="seed: 42 in the checkpoint, 7 now"):
        run_in_process(tiny_args(tmp_path, "--resume_from_checkpoint", "latest", "--seed", "7", max_steps=9,
                                 stages=(1, 2, 3)))
    assert (tmp_path / "training_config.yaml").read_bytes() == before
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-3"]


def test_an_incomplete_checkpoint_is_skipped_and_the_run_still_ends_as_uninterrupted(progressive_run, tmp_path,
                                                                                        capsys):
    import shutil

    output_dir, _ = progressive_run
    for step in (7, 8):
        shutil.copytree(output_dir / "checkpoints" / f"checkpoint-{step}",
                        tmp_path / "checkpoints" / f"checkpoint-{step}")
    (tmp_path / "checkpoints" / "checkpoint-8" / "random_states_0.pkl").unlink()
    run_in_process(tiny_args(tmp_path, "--save_steps", "1", "--save_total_limit", "20", "--resume_from_checkpoint",
                             "latest", max_steps=9, stages=(1, 2, 3)))
    out = capsys.readouterr().out
    assert "checkpoint-8 is incomplete or corrupted (random_states_0.pkl missing)" in out
    assert "resumed from" in out and "checkpoint-7 at step 7" in out
    assert_same(load_file(tmp_path / "model" / "model.safetensors"), load_file(output_dir / "model" / "model.safetensors"))


def test_offline_paper_data_and_tokenizer_fail_in_one_line_naming_the_local_flag(tmp_path, capsys):
    assert run_in_process(tiny_args(tmp_path / "text8", "--dataset", "text8"), entry="cli") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: could not download http://mattmahoney.net/dc/text8.zip")
    assert "--dataset" in error and "\n" not in error
    assert run_in_process(tiny_args(tmp_path / "gpt2", "--tokenizer", "gpt2"), entry="cli") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: could not load the tokenizer 'gpt2'") and "--tokenizer" in error
    assert "\n" not in error


@pytest.fixture
def nan_losses(monkeypatch):
    """Make the training loss NaN at the chosen optimizer steps (0-based; validation is unaffected)."""
    from training.recipes import TarFlowRecipe

    bad_steps, calls, original = set(), [0], TarFlowRecipe.block_terms

    def block_terms(self, model, input_ids, stage):
        terms = original(self, model, input_ids, stage)
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] - 1 in bad_steps:
                return {**terms, "nll": terms["nll"] * float("nan")}
        return terms

    monkeypatch.setattr(TarFlowRecipe, "block_terms", block_terms)
    return bad_steps


def test_a_nan_step_is_skipped_and_reported(tmp_path, nan_losses, capsys):
    from evaluation.training_logs import read_metrics

    nan_losses.update({2, 3})
    results = run_in_process(tiny_args(tmp_path, max_steps=6))
    assert results["skipped_steps"] == 2 and results["steps"] == 6
    assert "step 2: non-finite loss nan" in capsys.readouterr().out
    assert read_metrics(tmp_path)[6]["train/skipped_steps"] == 2
    assert math.isfinite(results["validation"]["loss"])


def test_persistent_nans_stop_training_and_leave_finite_checkpoints(tmp_path, nan_losses):
    from training.checkpointing import complete_checkpoints
    from training.trainer import NonFiniteTrainingError

    nan_losses.update(range(2, 100))
    with pytest.raises(NonFiniteTrainingError, match="NaN/inf for 3 consecutive steps"):
        run_in_process(tiny_args(tmp_path, "--max_nonfinite_steps", "3", "--save_steps", "1",
                                 "--save_total_limit", "10", max_steps=8))
    checkpoints = complete_checkpoints(tmp_path)
    assert [path.name for path in checkpoints] == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    for path in checkpoints:
        assert all(torch.isfinite(t).all() for t in load_file(path / "model.safetensors").values())


def test_non_finite_weights_are_never_written():
    from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM
    from training.trainer import NonFiniteTrainingError, check_finite_parameters

    model = TarFlowForCausalFlowLM(TarFlowConfig(**TINY_MODEL, max_position_embeddings=16))
    with torch.no_grad():
        model.codebook.mu[0, 0] = float("inf")
    with pytest.raises(NonFiniteTrainingError, match="codebook.mu"):
        check_finite_parameters(model, "checkpoint at step 7")


def test_gpt2_baseline_trains_resumes_and_exports(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = tiny_args(tmp_path / "run", "--model", "gpt2", "--save_steps", "3", max_steps=6, stages=(1, 3))
    results = run_in_process(args)
    assert results["model"] == "gpt2" and results["stages"].startswith("joint training")  # never progressive
    final = load_file(tmp_path / "run" / "model" / "model.safetensors")
    rerun = run_in_process(args + ["--resume_from_checkpoint", str(tmp_path / "run" / "checkpoints" / "checkpoint-3")])
    assert rerun["validation"] == results["validation"]
    assert_same(load_file(tmp_path / "run" / "model" / "model.safetensors"), final)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_layer == 3
    assert len(AutoTokenizer.from_pretrained(tmp_path / "run" / "model")) == 27
