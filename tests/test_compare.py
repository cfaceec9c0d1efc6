"""make compare's table, from output shaped as dvc 3's ``exp show --json``
(test_experiments runs it on the real dvc's output)."""

from __future__ import annotations

import copy

from catsdogs.core.config import TRAINING_STAGES
from catsdogs.experiments.compare import WIDTH, render, rows_from_exp_show


def headline(accuracy: float, champion: bool = False) -> dict:
    return {
        "test_accuracy": accuracy, "test_f1": accuracy - 0.01, "test_roc_auc": 0.9, "best_val_accuracy": 0.8,
        "epochs": 5, "training_seconds": 216.0, "ms_per_image": 3.2, "champion": champion,
    }


def data(rev: str, epochs: int, accuracies: dict[str, float], champion: str) -> dict:
    return {
        "rev": rev,
        "params": {"params.yaml": {"data": {"base": {"seed": 42}, "scratch_cnn": {"epochs": epochs},
                                            "download": {"sources": [{"location": "../x.zip"}]}}}},
        "metrics": {f"metrics/{m}.json": {"data": headline(a, m == champion)} for m, a in accuracies.items()},
    }


ACCURACY = dict(zip(TRAINING_STAGES, (0.766, 0.749, 0.604, 0.973, 0.852, 0.951)))
MAIN = "a" * 40


def exp_show() -> list[dict]:
    faster = {**ACCURACY, "scratch_cnn": 0.701}
    return [
        {"rev": "workspace", "name": None, "data": data("workspace", 5, ACCURACY, "vgg16_features"), "experiments": None},
        {
            "rev": MAIN, "name": "main", "data": data(MAIN, 5, ACCURACY, "vgg16_features"),
            "experiments": [
                {"name": "q-epoch1-with-a-very-long-name", "executor": {"state": "success"},
                 "revs": [{"rev": "b" * 40, "name": "q-epoch1-with-a-very-long-name", "data": data("b" * 40, 1, faster, "vgg16_features")}]},
                {"name": "q-epoch2", "executor": {"state": "queued"},
                 "revs": [{"rev": "c" * 40, "name": "q-epoch2", "data": {"rev": "c" * 40, "params": data("c", 2, {}, "")["params"]}}]},
            ],
        },
    ]


def test_every_row_and_model_fits_in_120_columns():
    text = render(rows_from_exp_show(exp_show()))
    print(text)
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    headers = [line.split()[-6:] for line in text.splitlines() if line.endswith("fine_tune")]
    assert headers == [list(TRAINING_STAGES)] * 3  # a column per model in each figure's block


def test_figures_champion_and_changed_params():
    rows = rows_from_exp_show(exp_show())
    assert [r.name for r in rows] == ["workspace", "main", "q-epoch1-with-a-very-long-name", "q-epoch2"]
    text = render(rows)
    accuracy_block, f1_block, minutes_block, changes = text.strip().split("\n\n")
    main_line = next(line for line in accuracy_block.splitlines() if line.startswith("main"))
    assert main_line.split()[1:] == ["0.766", "0.749", "0.604", "0.973*", "0.852", "0.951"]
    assert "0.701" in accuracy_block and "0.691" in f1_block
    assert minutes_block.splitlines()[1].split()[1:] == ["3.6"] * 6
    queued = next(line for line in accuracy_block.splitlines() if "q-epoch2" in line)
    assert "q-epoch1-with-a-very-lo…" in accuracy_block  # long names are cut, not the table
    assert queued.split()[1:] == ["-"] * 6
    assert "scratch_cnn.epochs=1" in changes and "[queued] scratch_cnn.epochs=2" in changes
    assert "main" in changes and "(baseline)" in changes


def test_a_workspace_edit_shows_as_its_change():
    shown = exp_show()
    edited = copy.deepcopy(shown)
    edited[0]["data"]["params"]["params.yaml"]["data"]["base"]["seed"] = 7
    changes = render(rows_from_exp_show(edited)).strip().split("\n\n")[-1]
    assert next(line for line in changes.splitlines() if line.startswith("workspace")).split()[1] == "base.seed=7"
