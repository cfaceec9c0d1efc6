"""The book profile is the chapter's settings exactly, and runs as one command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from catsdogs.core.profile_params import ProfileError, apply_profile, load_params_with_profile, load_profile
from catsdogs.speed.profiles import experiment_command, set_arguments

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"

# Deep Learning with Python, chapter 5, as issue 6 lists it.
CHAPTER = {
    "scratch_cnn": (30, None, 1e-3),
    "regularized_cnn": (30, None, 1e-3),
    "augmented_cnn": (100, 100, 1e-4),
    "vgg16_features": (30, None, 1e-4),
    "vgg16_augmented": (100, 100, 2e-5),
    "fine_tune": (100, 100, 1e-5),
}


def test_book_profile_is_the_chapters_settings():
    params = load_params_with_profile(PARAMS, "book")
    assert params.base.image_size == 150
    for stage, (epochs, steps, learning_rate) in CHAPTER.items():
        settings = getattr(params, stage)
        assert (settings.epochs, settings.steps_per_epoch, settings.learning_rate) == (epochs, steps, learning_rate), stage
        assert settings.batch_size == 30, stage
        assert settings.optimizer == "rmsprop", stage
    assert params.fine_tune.trainable_from == "block4_conv1"  # blocks 4 and 5
    assert params.fine_tune.initial_head == "vgg16_augmented"
    # The chapter trains these two from fresh weights; the default profile warm-starts them.
    assert params.augmented_cnn.initial_weights == "none" and params.vgg16_augmented.initial_head == "none"
    assert params.vgg16.preprocessing == "rescale"  # inputs scaled to [0, 1]


def test_the_default_profile_is_smaller_than_the_book():
    default = load_params_with_profile(PARAMS, None)
    book = load_params_with_profile(PARAMS, "book")
    for stage in CHAPTER:
        assert getattr(default, stage).epochs <= getattr(book, stage).epochs


def test_set_arguments_round_trip_through_yaml():
    profile = load_profile("book")
    args = set_arguments(profile)
    assert args[::2] == ["-S"] * (len(args) // 2)
    raw = yaml.safe_load(PARAMS.read_text())
    for assignment in args[1::2]:
        key, text = assignment.split("=", 1)
        section, name = key.split(".")
        assert name in raw[section], key  # DVC would add an unknown key silently
        assert yaml.safe_load(text) == profile[section][name], assignment


def test_experiment_command_runs_dvc_exp_with_a_dated_name():
    command = experiment_command("book", {"base": {"image_size": 150}})
    assert command[:4] == ["dvc", "exp", "run", "-n"]
    assert command[4].startswith("book-")
    assert command[5:] == ["-S", "base.image_size=150"]


def test_a_profile_setting_an_unknown_key_is_refused(tmp_path):
    (tmp_path / "typo.yaml").write_text("scratch_cnn:\n  epoch: 3\n")
    with pytest.raises(ProfileError, match=r"scratch_cnn\.epoch,"):
        load_params_with_profile(PARAMS, "typo", tmp_path)
    with pytest.raises(ProfileError, match="not a section"):
        apply_profile({"base": {"seed": 1}}, {"basis": {"seed": 2}})


def test_a_profile_with_a_bad_value_names_it(tmp_path):
    (tmp_path / "bad.yaml").write_text("fine_tune:\n  trainable_from: block9_conv1\n")
    with pytest.raises(ProfileError, match=r"profile bad: .*fine_tune\.trainable_from"):
        load_params_with_profile(PARAMS, "bad", tmp_path)


def test_a_missing_profile_lists_the_known_ones(tmp_path):
    with pytest.raises(ProfileError, match=r"no such profile \(profiles: book\)"):
        load_profile("gpu")


def test_dry_run_prints_the_command_without_running_it():
    done = subprocess.run(
        [sys.executable, "-m", "catsdogs.speed.profiles", "book", "--dry-run", "--no-estimate"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    assert "$ dvc exp run -n book-" in done.stdout
    assert "-S fine_tune.epochs=100" in done.stdout
    assert "-S vgg16.preprocessing=rescale" in done.stdout
