"""Which pipeline execution a stage belongs to: real process trees, real git."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from catsdogs.tracking import execution
from catsdogs.tracking.execution import changed_params, flat_params

from conftest import GIT_ENV

# A stage: prints the execution it finds.
STAGE_CODE = (
    "import json; from catsdogs.tracking.execution import current_execution as c; e = c(); "
    "print(json.dumps({'key': e.key, 'command': e.command, 'experiment': e.experiment}))"
)


def fake_dvc(folder: Path) -> Path:
    """An executable named ``dvc`` that runs two "stages" through a shell, as DVC does."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "dvc"
    stage = f"{sys.executable} -c \"{STAGE_CODE}\""
    script.write_text(
        f"#!{sys.executable}\n"
        "import subprocess\n"
        f"for _ in range(2):\n    subprocess.run({stage!r}, shell=True, check=True)\n"
    )
    script.chmod(0o755)
    return script


def stages_of_one_execution(script: Path, **env: str) -> list[dict]:
    done = subprocess.run(
        [str(script), "repro"], capture_output=True, text=True, check=True, timeout=120,
        env={**os.environ, **env},
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"DVC_EXP_NAME": "wider-head", "DVC_EXP_BASELINE_REV": "abc123"}, "wider-head"),
        ({"DVC_EXP_BASELINE_REV": "abc123"}, "abc123"),
        ({"DVC_ROOT": "/repo", "DVC_STAGE": "evaluate"}, None),  # what plain `dvc repro` sets
    ],
)
def test_dvc_experiments_are_recognised_from_the_environment(env, expected):
    assert execution.experiment_name(env) == expected


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/repo/.venv/bin/python3.11", "/repo/.venv/bin/dvc", "repro"], True),
        (["/usr/bin/python3", "-m", "dvc", "exp", "exec-run", "--infofile", "x.run"], True),
        (["dvc", "exp", "run"], True),
        (["/bin/sh", "-c", "python stages/train.py scratch_cnn --params params.yaml"], False),
        (["/usr/bin/python3", "-m", "pytest", "tests/test_dvc.py"], False),
        ([], False),
    ],
)
def test_dvc_processes_are_told_apart_from_shells_and_stages(cmdline, expected):
    assert execution.is_dvc_command(cmdline) is expected


def test_stages_of_one_dvc_process_share_its_execution_and_two_processes_differ(tmp_path):
    script = fake_dvc(tmp_path / "bin")

    first = stages_of_one_execution(script, DVC_EXP_NAME="exp-one")
    second = stages_of_one_execution(script)

    assert len(first) == len(second) == 2
    assert first[0]["key"] == first[1]["key"]
    assert second[0]["key"] == second[1]["key"]
    assert first[0]["key"] != second[0]["key"]
    assert str(script) in first[0]["command"]
    assert first[0]["experiment"] == "exp-one" and second[0]["experiment"] is None


def test_a_stage_run_by_hand_is_its_own_execution():
    own = execution.current_execution()
    assert own.key.endswith(f":{os.getpid()}:{own.started:.2f}")
    named = execution.current_execution(env={"DVC_EXP_NAME": "wider-head"})
    assert named.key == f"{own.key}:wider-head" and named.experiment == "wider-head"


def test_params_are_flattened_with_dotted_keys_and_lists_kept_whole():
    flat = flat_params("base:\n  seed: 7\nscratch_cnn:\n  epochs: 3\n  steps: null\nsources:\n  - {location: a}\n")
    assert flat == {"base.seed": 7, "scratch_cnn.epochs": 3, "scratch_cnn.steps": None, "sources": [{"location": "a"}]}


def test_changed_params_pair_both_values_and_missing_keys_with_none():
    changed = changed_params({"a.x": 1, "a.y": 2, "b": 1}, {"a.x": 1, "a.y": 3, "c": 0.5})
    assert changed == {"a.y": (2, 3), "b": (1, None), "c": (None, 0.5)}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def test_baseline_params_come_from_main_else_head(tmp_path):
    (tmp_path / "params.yaml").write_text("lr: 1\n")
    git(tmp_path, "init", "-q", "-b", "trunk")
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "-qm", "one")
    assert execution.baseline_params(tmp_path) == ("HEAD", "lr: 1\n")

    git(tmp_path, "branch", "main")
    (tmp_path / "params.yaml").write_text("lr: 2\n")
    git(tmp_path, "commit", "-qam", "two")
    assert execution.baseline_params(tmp_path) == ("main", "lr: 1\n")


def test_no_git_means_no_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    (tmp_path / "params.yaml").write_text("lr: 1\n")
    assert execution.baseline_params(tmp_path) is None
