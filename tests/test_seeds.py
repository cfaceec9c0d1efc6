"""The seed-variance report: mean and spread per model over experiments."""

from __future__ import annotations

import sys
import time

import pandas as pd
import pytest

from catsdogs.experiments.seeds import SeedReportError, scores_by_seed, spread, write_seed_report

from conftest import run

FILES = {
    ("a1", "metrics/training/scratch_cnn.json"): {"best_val_accuracy": 0.70},
    ("a1", "metrics/training/augmented_cnn.json"): {"best_val_accuracy": 0.60},
    ("b2", "metrics/training/scratch_cnn.json"): {"best_val_accuracy": 0.74},
    ("b2", "metrics/training/augmented_cnn.json"): {"best_val_accuracy": 0.66},
    ("b2", "metrics/scratch_cnn.json"): {"test_accuracy": 0.75},
    ("c3", "metrics/training/scratch_cnn.json"): {"best_val_accuracy": 0.78},
    ("d4", "metrics/training/scratch_cnn.json"): {"best_val_accuracy": 0.10},
    ("e5", "metrics/training/scratch_cnn.json"): {"best_val_accuracy": 0.99},
}


def _lock(seed, *stages, evaluate=None):
    """A dvc.lock whose training stages ran under ``seed``, and evaluate under ``evaluate``."""
    entries = {f"cnn@{stage}": {"params": {"params.yaml": {"base": {"seed": seed, "image_size": 128}}}} for stage in stages}
    if evaluate is not None:
        entries["evaluate"] = {"params": {"params.yaml": {"base.seed": evaluate, "base.image_size": 128}}}
    return {"schema": "2.0", "stages": entries}


FILES.update({
    ("a1", "dvc.lock"): _lock(1, "scratch_cnn", "augmented_cnn"),
    ("b2", "dvc.lock"): _lock(2, "scratch_cnn", "augmented_cnn", evaluate=2),
    ("c3", "dvc.lock"): _lock(3, "scratch_cnn"),
    ("d4", "dvc.lock"): _lock(4, "scratch_cnn"),
    ("e5", "dvc.lock"): _lock(3, "scratch_cnn"),
    # Carried over from the commit the experiment started from: seed 42's files, not seed 6's.
    ("f6", "dvc.lock"): _lock(42, "scratch_cnn", evaluate=42),
    ("f6", "metrics/training/scratch_cnn.json"): {"best_val_accuracy": 0.99},
    ("f6", "metrics/scratch_cnn.json"): {"test_accuracy": 0.99},
    # Trained under its seed, but evaluate was not rerun: its test accuracy is seed 42's.
    ("g7", "dvc.lock"): _lock(7, "scratch_cnn", evaluate=42),
    ("g7", "metrics/training/scratch_cnn.json"): {"best_val_accuracy": 0.72},
    ("g7", "metrics/scratch_cnn.json"): {"test_accuracy": 0.99},
})
RECORDS = [
    {"Experiment": None, "rev": "workspace", "base.seed": 42},
    {"Experiment": "s1", "rev": "a1", "State": "Success", "base.seed": 1},
    {"Experiment": "s2", "rev": "b2", "State": "Success", "params.yaml:base.seed": 2},
    {"Experiment": "s3", "rev": "c3", "State": "Success", "base.seed": 3},
    {"Experiment": "s3-failed", "rev": "d4", "State": "Failed", "base.seed": 4},
    {"Experiment": "s3-again", "rev": "e5", "State": "Success", "base.seed": 3},  # seed 3 counts once
]
STALE = [
    {"Experiment": "s6", "rev": "f6", "State": "Success", "base.seed": 6},
    {"Experiment": "s7", "rev": "g7", "State": "Success", "base.seed": 7},
]


def read(rev, path):
    return FILES.get((rev, path))


def test_mean_and_spread_per_model_by_hand(tmp_path):
    scores = scores_by_seed(RECORDS[1:], read)
    assert sorted(scores["seed"].unique()) == [1, 2, 3]
    table = spread(scores).set_index("model")
    assert table.loc["scratch_cnn", "best_val_accuracy_seeds"] == 3
    assert table.loc["scratch_cnn", "best_val_accuracy_mean"] == pytest.approx(0.74)
    # sample SD of 0.70, 0.74, 0.78: sqrt((0.04^2 + 0 + 0.04^2) / 2) = 0.04
    assert table.loc["scratch_cnn", "best_val_accuracy_std"] == pytest.approx(0.04)
    assert table.loc["augmented_cnn", "best_val_accuracy_mean"] == pytest.approx(0.63)
    assert table.loc["scratch_cnn", "test_accuracy_seeds"] == 1
    assert list(table.index) == ["scratch_cnn", "augmented_cnn"]  # pipeline order

    write_seed_report(RECORDS[1:], read, tmp_path)
    text = (tmp_path / "seeds.md").read_text()
    assert "| scratch_cnn | 3 | 0.740 +/- 0.040 (0.700-0.780) | 0.750 +/- - (0.750-0.750) |" in text
    assert pd.read_csv(tmp_path / "seeds.csv")["model"].tolist() == ["scratch_cnn", "augmented_cnn"]


def test_files_a_stage_did_not_rerun_under_the_seed_do_not_count():
    scores = scores_by_seed(STALE, read)
    assert scores.to_dict("records") == [
        {"seed": 7, "experiment": "s7", "model": "scratch_cnn", "best_val_accuracy": 0.72, "test_accuracy": None}
    ]


def test_no_experiment_says_how_to_queue_them(tmp_path):
    with pytest.raises(SeedReportError, match="dvc exp run --queue -S 'base.seed=1,2,3'"):
        write_seed_report(RECORDS[:1], read, tmp_path)
    with pytest.raises(SeedReportError, match="for seeds 9"):
        write_seed_report(RECORDS[1:], read, tmp_path, seeds=[9])


@pytest.mark.slow
def test_the_documented_queue_and_report_run(repo_copy):
    """The README's commands, on the tiny copy: two seeds of the trio, then the report."""
    run(["dvc", "exp", "run", "--queue", "-S", "base.seed=1,2", "cnn@scratch_cnn", "cnn@regularized_cnn", "cnn@augmented_cnn"], repo_copy)
    run(["dvc", "queue", "start", "--jobs", "1"], repo_copy)
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo_copy).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(10)
    assert status.count("Success") == 2, status
    done = run([sys.executable, "-m", "catsdogs.experiments.seeds"], repo_copy)
    table = pd.read_csv(repo_copy / "reports" / "seeds.csv").set_index("model")
    assert set(table.index) == {"scratch_cnn", "regularized_cnn", "augmented_cnn"}
    assert (table["best_val_accuracy_seeds"] == 2).all()
    text = (repo_copy / "reports" / "seeds.md").read_text()
    assert "under 2 seeds (1, 2)" in text and "seeds.md" in done.stdout
