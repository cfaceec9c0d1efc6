"""params.yaml is parsed into typed sections and bad values are named."""

from pathlib import Path

import pytest
import yaml

from catsdogs.core.config import ParamsError, flatten, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.base.image_size >= 32
    assert params.build_small_dataset.train_per_class == 1500
    assert params.build_small_dataset.validation_per_class == 500
    assert params.build_small_dataset.test_per_class == 500
    assert params.download.sources[0].location.endswith("train.zip")
    assert params.download.sources[0].sha256 == "88bf3326eb2ffe197e02049ee0601808d0edd260f1d9c320755b5675c5e3aa69"
    assert params.download.sources[-1].is_url


@pytest.mark.parametrize(
    ("raw", "key", "hint"),
    [
        ({"scratch_cnn": {"optimizer": "adamw"}}, "scratch_cnn.optimizer", "rmsprop, adam, sgd"),
        ({"scratch_cnn": {"epochs": 0}}, "scratch_cnn.epochs", "greater than 0"),
        ({"scratch_cnn": {"epochs": 2.5}}, "scratch_cnn.epochs", "whole number"),
        ({"scratch_cnn": {"epoch": 3}}, "scratch_cnn.epoch", "allowed keys"),
        ({"scratchcnn": {}}, "scratchcnn", "allowed sections"),
        ({"base": {"image_size": -1}}, "base.image_size", "greater than 0"),
        ({"augmentation": {"fill_mode": "mirror"}}, "augmentation.fill_mode", "nearest"),
        ({"augmentation": {"zoom": 1.5}}, "augmentation.zoom", "[0, 1)"),
        ({"download": {"sources": []}}, "download.sources", "non-empty"),
        ({"download": {"sources": [{"location": "x.zip", "sha256": "abc"}]}}, "download.sources[0].sha256", "64 hexadecimal"),
        ({"download": {"sources": [{"path": "x.zip"}]}}, "download.sources[0]", "location"),
        ({"build_small_dataset": {"test_per_class": None}}, "build_small_dataset.test_per_class", "must be set"),
        ({"fine_tune": {"learning_rate": "fast"}}, "fine_tune.learning_rate", "must be a number"),
        ({"fine_tune": {"learning_rate": "nan"}}, "fine_tune.learning_rate", "finite"),
    ],
)
def test_bad_values_name_the_key(raw, key, hint):
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert key in str(err.value)
    assert hint in str(err.value)


def test_a_learning_rate_as_dvc_writes_it_is_a_number(tmp_path):
    # `dvc exp run -S fine_tune.learning_rate=1e-5` writes `1e-05`, a string to PyYAML.
    path = tmp_path / "params.yaml"
    path.write_text("fine_tune:\n  learning_rate: 1e-05\n")
    assert load_params(path).fine_tune.learning_rate == 1e-5


def test_sources_accept_plain_strings_and_lowercase_digests():
    digest = "AB" * 32
    params = parse_params({"download": {"sources": ["/data/train.zip", {"location": "https://x/y.zip", "sha256": digest}]}})
    assert params.download.sources[0].location == "/data/train.zip"
    assert params.download.sources[0].sha256 is None
    assert params.download.sources[1].sha256 == digest.lower()
    assert params.download.sources[1].is_url


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_flatten_names_every_value():
    params = load_params(ROOT / "params.yaml")
    flat = flatten(params.download, "download")
    assert flat["download.sources.0.location"].endswith("train.zip")
    assert flat["download.max_entry_mb"] == params.download.max_entry_mb
    assert flatten(params.base, "base") == {
        "base.seed": params.base.seed, "base.image_size": params.base.image_size, "base.precision": params.base.precision,
        "base.distribution": params.base.distribution,
    }


def test_params_yaml_has_every_section_it_documents():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Round trip: what is committed parses without falling back on hidden defaults for whole sections.
    assert set(raw) >= {"base", "download", "build_small_dataset"}


@pytest.mark.parametrize(
    "key, good",
    [("augmented_cnn.initial_weights", ("none", "regularized_cnn")), ("vgg16_augmented.initial_head", ("none", "vgg16_features"))],
)
def test_warm_start_sources_are_checked(key, good):
    section, name = key.split(".")
    for value in good:
        assert getattr(getattr(parse_params({section: {name: value}}), section), name) == value
    with pytest.raises(ParamsError, match=rf"{key}: unknown value 'scratch_cnn'; allowed: {', '.join(good)}"):
        parse_params({section: {name: "scratch_cnn"}})
