"""Training settings, presets, stage schedule, learning rate, EMA, checkpoint bookkeeping, NaN guard, baseline."""

import pytest
import torch
import yaml

from modeling_tarflow import TarFlowConfig
from training.arguments import CONFIG_DIR, load_preset, parse_settings
from training.checkpointing import (check_resumable, complete_checkpoints, find_resume_checkpoint, prune_checkpoints,
                                    write_manifest)
from training.errors import CheckpointError, SettingsError
from training.stages import StageSchedule
from training.trainer import (NonFiniteStepGuard, NonFiniteTrainingError, build_ema, build_lr_scheduler,
                              build_optimizer, warmed_up_decay)

PAPER_PRESETS = {  # §3.8 of the method notes: (dataset, d, block, couplings, mixtures per layer, stages)
    "text8-mix1": ("text8", 5, 256, ["mixture_cdf"] * 3, [27, 27, 27], None),
    "text8-mixd": ("text8", 5, 256, ["mixture_rosenblatt", "mixture_cdf", "mixture_cdf"], [27, 2, 2], [1, 2, 3]),
    "owt-mix1": ("openwebtext", 16, 1024, ["mixture_cdf"] * 3, [64, 64, 64], None),
    "owt-mixd": ("openwebtext", 16, 1024, ["mixture_rosenblatt", "mixture_cdf", "mixture_cdf"], [50257, 64, 64],
                 [1, 2, 3]),
}


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_paper_presets_have_the_paper_architecture(name):
    dataset, latent_dim, block_size, couplings, mixtures, stages = PAPER_PRESETS[name]
    preset = load_preset(name)
    vocab_size = 27 if dataset == "text8" else 50257
    config = TarFlowConfig(vocab_size=vocab_size, max_position_embeddings=preset["block_size"],
                           **preset["model_config"])
    assert (preset["dataset"], config.latent_dim, preset["block_size"]) == (dataset, latent_dim, block_size)
    assert (config.hidden_size, config.num_attention_heads, config.num_transformer_layers) == (768, 12, 12)
    assert [layer["coupling"] for layer in config.flow_layers] == couplings
    assert [layer["num_mixtures"] for layer in config.flow_layers] == mixtures
    assert [layer["direction"] for layer in config.flow_layers] == ["l2r", "r2l", "l2r"]
    assert preset.get("stage_flow_layers") == stages
    if name.endswith("mix1"):
        assert [layer["num_layers"] for layer in config.flow_layers] == [2, 2, 8]


def test_every_preset_file_parses():
    names = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
    assert {"quickstart", *PAPER_PRESETS} <= set(names)
    for name in names:
        settings, data_config = parse_settings(["--config", name])
        assert settings.model_config and data_config.block_size > 0


def test_command_line_flags_override_the_preset():
    settings, data_config = parse_settings(["--config", "quickstart", "--max_steps", "7", "--block_size", "64",
                                            "--sample_length", "64", "--model_config", '{"hidden_size": 64}',
                                            "--model", "gpt2"])
    preset = load_preset("quickstart")
    assert (settings.max_steps, data_config.block_size, settings.model) == (7, 64, "gpt2")
    assert settings.model_config == {**preset["model_config"], "hidden_size": 64}
    assert settings.learning_rate == preset["learning_rate"]
    assert settings.output_dir == "outputs/quickstart-gpt2"


def test_a_preset_with_an_unknown_setting_is_rejected(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"max_stepz": 3}))
    with pytest.raises(ValueError, match="max_stepz"):
        parse_settings(["--config", str(path)])


def test_stage_schedule_splits_the_steps():
    schedule = StageSchedule([1, 2, 3], max_steps=10, fractions=[0.5, 0.25, 0.25], total_flow_layers=3)
    assert [(s.start_step, s.end_step) for s in schedule.stages] == [(0, 5), (5, 8), (8, 10)]
    assert [(s.num_flow_layers, s.num_frozen_flow_layers) for s in schedule.stages] == [(1, 0), (2, 1), (3, 2)]
    assert [schedule.stage_at(step).index for step in (0, 4, 5, 7, 8, 9)] == [0, 0, 1, 1, 2, 2]
    assert StageSchedule([3], max_steps=10, fractions=[0.5, 0.5]).stages[0].end_step == 10  # joint: all steps


@pytest.mark.parametrize("max_steps", [3, 4, 6, 7])
def test_every_stage_gets_at_least_one_step(max_steps):
    settings, _ = parse_settings(["--config", "quickstart", "--max_steps", str(max_steps)])
    schedule = StageSchedule(settings.stage_flow_layers, max_steps, settings.stage_fractions, total_flow_layers=3)
    assert all(stage.num_steps >= 1 for stage in schedule.stages), schedule.describe()
    assert schedule.stages[0].start_step == 0 and schedule.stages[-1].end_step == max_steps
    assert [s.end_step for s in schedule.stages[:-1]] == [s.start_step for s in schedule.stages[1:]]


@pytest.mark.parametrize("layers, total", [([2, 1], None), ([1, 2], 3), ([0, 3], None)])
def test_bad_stage_schedules_are_rejected(layers, total):
    with pytest.raises(ValueError, match="stage_flow_layers"):
        StageSchedule(layers, max_steps=10, total_flow_layers=total)


def test_learning_rate_warms_up_and_decays_again_in_every_stage():
    settings, _ = parse_settings(["--learning_rate", "1.0", "--warmup_steps", "2", "--lr_scheduler_type", "linear"])
    optimizer = build_optimizer(torch.nn.Linear(2, 2), settings)
    scheduler = build_lr_scheduler(optimizer, StageSchedule([1, 2], max_steps=12), settings)
    rates = []
    for _ in range(12):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == rates[6] == 0.0 and rates[2] == rates[8] == 1.0
    assert rates[5] < rates[4] < rates[3] < 1.0


def test_optimizer_decays_matrices_only():
    settings, _ = parse_settings(["--weight_decay", "0.1"])
    optimizer = build_optimizer(torch.nn.Linear(2, 3), settings)
    assert [(len(g["params"]), g["weight_decay"]) for g in optimizer.param_groups] == [(1, 0.1), (1, 0.0)]


def test_ema_warms_up_then_averages_with_the_nominal_decay():
    assert warmed_up_decay(0.999, 0) == pytest.approx(0.1) and warmed_up_decay(0.999, 10**6) == 0.999
    model = torch.nn.Linear(1, 1, bias=False)
    ema = build_ema(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update_parameters(model)  # then decay min(0.5, 2/11)
    assert ema.module.weight.item() == pytest.approx(1.0 + (1 - 2 / 11) * 2.0)
    assert not ema.module.weight.requires_grad


def fake_checkpoint(folder, step: int):
    """A checkpoint folder as `save_checkpoint` leaves it: files and the manifest listing them."""
    folder.mkdir(parents=True)
    (folder / "random_states_0.pkl").write_bytes(b"state")
    write_manifest(folder, step, run_record={})
    return folder


def test_resume_finds_the_newest_whole_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 10, 9):
        fake_checkpoint(root / f"checkpoint-{step}", step)
    for name in (".tmp-checkpoint-11", "checkpoint-x"):
        (root / name).mkdir(parents=True)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    assert find_resume_checkpoint("latest", tmp_path).name == "checkpoint-10"
    assert find_resume_checkpoint("latest", tmp_path / "empty") is None
    assert find_resume_checkpoint(None, tmp_path) is None
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        find_resume_checkpoint(str(tmp_path / "missing"), tmp_path)
    prune_checkpoints(tmp_path, total_limit=2)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-10", "checkpoint-9", "checkpoint-x"]


def test_an_incomplete_checkpoint_is_refused_or_skipped_with_a_note(tmp_path):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root / "checkpoint-4", 4)
    (fake_checkpoint(root / "checkpoint-6", 6) / "random_states_0.pkl").unlink()
    notes = []
    assert find_resume_checkpoint("latest", tmp_path, notes.append).name == "checkpoint-4"
    assert "checkpoint-6 is incomplete or corrupted (random_states_0.pkl missing)" in notes[0]
    with pytest.raises(CheckpointError, match="incomplete or corrupted.*random_states_0.pkl missing"):
        find_resume_checkpoint(str(root / "checkpoint-6"), tmp_path)
    (root / "checkpoint-4" / "checkpoint.json").unlink()  # e.g. a folder copied by hand
    with pytest.raises(CheckpointError, match="no whole checkpoint"):
        find_resume_checkpoint("latest", tmp_path, notes.append)


def run_record(**changes) -> dict:
    settings = {"model": "tarflow", "seed": 1, "max_steps": 10, "logging_steps": 5, "dataset": "tiny-literary",
                "stage_flow_layers": [1, 2], "model_config": {"hidden_size": 32}}
    architecture = {"hidden_size": 32, "channel_mixing": True, "transformers_version": "5.0"}
    record = {"settings": settings, "architecture": architecture, "num_processes": 1, "stage_starts": [0, 5]}
    for key, value in changes.items():
        part = "architecture" if key in architecture else "settings" if key in settings else None
        (record[part] if part else record).update({key: value})
    return record


def test_resume_refuses_a_run_with_other_settings_and_names_them():
    with pytest.raises(CheckpointError, match="model_config.hidden_size: 32 in the checkpoint, 64 now") as refused:
        check_resumable(run_record(), run_record(model_config={"hidden_size": 64}, hidden_size=64), 3, "ckpt")
    assert "architecture.hidden_size" not in str(refused.value)  # named once, as the user spells it
    cases = {"channel_mixing": False, "stage_flow_layers": [1, 3], "seed": 2, "dataset": "text8", "num_processes": 2}
    for key, value in cases.items():
        with pytest.raises(CheckpointError, match=key.replace("num_", "")):
            check_resumable(run_record(), run_record(**{key: value}), 3, "ckpt")
    check_resumable(run_record(), run_record(logging_steps=1, transformers_version="5.1"), 3, "ckpt")


def test_resume_may_lengthen_the_run_but_not_move_the_stages_already_trained():
    check_resumable(run_record(), run_record(max_steps=12, stage_starts=[0, 5]), 7, "ckpt")
    check_resumable(run_record(), run_record(max_steps=20, stage_starts=[0, 10]), 4, "ckpt")  # still in stage 1
    with pytest.raises(CheckpointError, match="stages would start at steps"):
        check_resumable(run_record(), run_record(max_steps=20, stage_starts=[0, 10]), 7, "ckpt")
    with pytest.raises(CheckpointError, match="max_steps: 5 now, but the checkpoint is at step 7"):
        check_resumable(run_record(), run_record(max_steps=5), 7, "ckpt")


@pytest.mark.parametrize("flag, value", [("--max_grad_norm", "-1"), ("--warmup_steps", "-1"),
                                         ("--weight_decay", "-0.1"), ("--save_steps", "-1"),
                                         ("--learning_rate", "-0.001"), ("--max_grad_norm", "nan")])
def test_negative_settings_are_rejected(flag, value):
    with pytest.raises(SettingsError, match=f"{flag} must be >= 0.*got"):
        parse_settings([flag, value])


def test_zero_is_still_allowed_where_it_means_off_and_a_zero_learning_rate_warns():
    settings, _ = parse_settings(["--max_grad_norm", "0", "--save_steps", "0", "--warmup_steps", "0"])
    assert (settings.max_grad_norm, settings.save_steps) == (0, 0)
    with pytest.warns(UserWarning, match="--learning_rate 0"):
        parse_settings(["--learning_rate", "0"])


def test_a_misspelt_model_config_key_is_rejected_with_the_allowed_ones(tmp_path):
    with pytest.raises(SettingsError, match=r"'hiden_size'.*did you mean 'hidden_size'.*TarFlowConfig takes.*latent"):
        parse_settings(["--config", "quickstart", "--model_config", '{"hiden_size": 64}'])
    preset = tmp_path / "typo.yaml"
    preset.write_text(yaml.safe_dump({"model_config": {"num_atention_heads": 2}}))
    with pytest.raises(SettingsError, match="num_atention_heads"):
        parse_settings(["--config", str(preset)])
    settings, _ = parse_settings(["--model_config", '{"dropout": 0.1, "return_dict": true}'])  # own, inherited
    assert settings.model_config == {"dropout": 0.1, "return_dict": True}


@pytest.mark.parametrize("values, message", [
    ({"max_steps": 1000.0}, r"max_steps must be int, got 1000.0 \(float\)"),
    ({"learning_rate": "1e-3"}, "learning_rate must be float.*write 1.0e-3"),
    ({"stage_fractions": [1, "a"]}, "stage_fractions must be list"),
    ({"bf16": "yes"}, "bf16 must be bool"),
])
def test_a_preset_value_of_the_wrong_type_is_rejected_naming_the_file(tmp_path, values, message):
    preset = tmp_path / "typed.yaml"
    preset.write_text(yaml.safe_dump(values))
    with pytest.raises(SettingsError, match=f"typed.yaml: {message}"):
        parse_settings(["--config", str(preset)])


def test_a_preset_with_a_yaml_syntax_error_names_the_file(tmp_path):
    preset = tmp_path / "broken.yaml"
    preset.write_text("max_steps: 10\nmodel_config: {hidden_size: 32\n")
    with pytest.raises(SettingsError, match="broken.yaml: not valid YAML"):
        parse_settings(["--config", str(preset)])


def test_help_shows_the_values_the_preset_sets(capsys):
    with pytest.raises(SystemExit):
        parse_settings(["--config", "quickstart", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    preset = load_preset("quickstart")
    assert f"peak AdamW learning rate (default: {preset['learning_rate']})" in help_text
    assert f"(all stages together) (default: {preset['max_steps']})" in help_text
    assert "quickstart.yaml" in help_text


def test_guard_skips_non_finite_steps_and_stops_when_they_persist():
    guard = NonFiniteStepGuard(max_consecutive=2)
    assert guard.step_is_finite(0, 1.0, 1.0)
    assert not guard.step_is_finite(1, float("nan"), 1.0)
    assert guard.step_is_finite(2, 1.0, 1.0)  # a finite step resets the count
    assert not guard.step_is_finite(3, 1.0, float("inf"))
    with pytest.raises(NonFiniteTrainingError, match="2 consecutive steps"):
        guard.step_is_finite(4, float("nan"), float("nan"))


def test_baseline_matches_tarflow_size_and_scores_every_token():
    from training.recipes import baseline_block_nll, build_baseline
    from training.tokenization_char import build_char_tokenizer

    config = TarFlowConfig(hidden_size=32, num_attention_heads=2, max_position_embeddings=16, dropout=0.1,
                           flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": 1},
                                        {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 2}])
    model = build_baseline(config, build_char_tokenizer()).eval()
    gpt2 = model.config
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.n_head, gpt2.n_inner, gpt2.vocab_size) == (3, 32, 2, 128, 27)
    assert (gpt2.n_positions, gpt2.bos_token_id, gpt2.eos_token_id, gpt2.resid_pdrop) == (17, 26, None, 0.1)
    ids = torch.randint(0, 27, (2, 16))
    log_probs = model(torch.cat([torch.full((2, 1), 26), ids], 1)).logits[:, :-1].log_softmax(-1)
    expected = -log_probs.gather(-1, ids[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(baseline_block_nll(model, ids, 26), expected)


def test_tensorboard_is_installed_with_the_package_and_its_absence_is_reported(monkeypatch, tmp_path):
    import configparser
    import importlib.util

    from training.trainer import trackers

    setup = configparser.ConfigParser()
    setup.read(CONFIG_DIR.parent.parent / "setup.cfg")
    assert "tensorboard" in setup["options"]["install_requires"].split()
    assert "tensorboard" in trackers("tensorboard", tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else
                        find_spec(name, *a))
    with pytest.warns(UserWarning, match="tensorboard is not installed, so only metrics.jsonl is written"):
        assert "tensorboard" not in trackers("tensorboard", tmp_path)


@pytest.mark.parametrize("processes, accumulation", [(1, 8), (2, 4), (8, 1)])
def test_a_preset_global_batch_gives_the_same_optimisation_on_any_number_of_processes(processes, accumulation):
    settings, _ = parse_settings(["--config", "text8-mixd"])
    line = settings.resolve_global_batch(processes)
    assert settings.gradient_accumulation_steps == accumulation
    assert line.startswith("global batch 512 blocks = 64 per process")


def test_a_global_batch_that_processes_cannot_split_evenly_is_refused():
    settings, _ = parse_settings(["--config", "text8-mixd", "--global_train_batch_size", "500"])
    with pytest.raises(SettingsError, match="global_train_batch_size 500 must be a positive multiple"):
        settings.resolve_global_batch(1)
