"""The study's registry and the one training entry point that reads it."""

import subprocess
import sys
from pathlib import Path

import pytest

from catsdogs.core import study
from catsdogs.core.config import ParamsError, parse_params
from catsdogs.training.model_stage import StageOutputs
from catsdogs.training.train_model import train_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_registry_is_the_chapters_six_models_in_order():
    assert study.NAMES == (
        "scratch_cnn", "regularized_cnn", "augmented_cnn", "vgg16_features", "vgg16_augmented", "fine_tune",
    )
    assert study.FROM_SCRATCH == study.NAMES[:3] and study.TRANSFER == study.NAMES[3:]
    assert [m.name for m in study.MODELS if m.augmented] == ["augmented_cnn", "vgg16_augmented", "fine_tune"]
    # A model starts only from models trained before it.
    for position, spec in enumerate(study.MODELS):
        assert set(spec.starts) - {"none"} <= set(study.NAMES[:position]), spec.name


def test_dvc_stage_names_follow_dvc_yaml():
    assert study.dvc_stage("scratch_cnn") == "cnn@scratch_cnn"
    assert study.dvc_stage("fine_tune") == "fine_tune"
    assert study.dvc_stage("vgg16_bottleneck") == "vgg16_bottleneck"  # not a model: the stage's own name


def test_an_unknown_model_names_the_known_ones():
    with pytest.raises(KeyError, match="no model 'resnet'.*scratch_cnn, regularized_cnn"):
        study.model("resnet")


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("augmented_cnn.initial_weights", "scratch_cnn", "none, regularized_cnn"),
        ("vgg16_augmented.initial_head", "fine_tune", "none, vgg16_features"),
        ("fine_tune.initial_head", "scratch_cnn", "none, vgg16_features, vgg16_augmented"),
    ],
)
def test_config_allows_only_the_starts_the_registry_lists(key, value, allowed):
    section, name = key.split(".")
    with pytest.raises(ParamsError, match=rf"params.yaml: {key}: unknown value '{value}'; allowed: {allowed}"):
        parse_params({section: {name: value}})


def test_a_vgg16_model_without_features_is_a_clear_error(tmp_path):
    outputs = StageOutputs(model=tmp_path / "m.keras", metrics=tmp_path / "m.json", plots_dir=tmp_path / "p")
    with pytest.raises(study.StudyError, match="vgg16_features: --features"):
        train_model("vgg16_features", parse_params({}), data_dir=tmp_path, outputs=outputs,
                    models_dir=tmp_path, features_dir=None)


def test_the_entry_point_refuses_a_model_the_study_lacks():
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py"), "resnet", "--data", "d", "--models", "m",
         "--model", "m.keras", "--metrics", "m.json", "--plots", "p"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "invalid choice: 'resnet'" in done.stderr and "scratch_cnn" in done.stderr
