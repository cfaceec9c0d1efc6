"""Paths from params.yaml mean the same file in the workspace and in a DVC
experiment's copy of the repository under .dvc/tmp/exps/."""

from pathlib import Path

import pytest

from catsdogs.core.project import ROOT_ENV, in_project, project_root


@pytest.fixture(autouse=True)
def outside_dvc(monkeypatch):
    monkeypatch.delenv(ROOT_ENV, raising=False)


def test_dvc_root_names_the_project_wherever_the_stage_runs(tmp_path, monkeypatch):
    # DVC sets it to the project for an experiment run in a copy, too
    # (test_experiments checks that against the real dvc).
    copy = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpxyz"
    copy.mkdir(parents=True)
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "proj"))
    assert in_project("../shared/a.zip", cwd=copy) == tmp_path / "proj" / "../shared/a.zip"


def test_a_relative_path_starts_at_the_project_also_inside_an_experiment_copy(tmp_path):
    project = tmp_path / "proj"
    copy = project / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12cd"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")  # the copy has its own dvc.yaml
    (project / "dvc.yaml").write_text("stages: {}\n")

    mirror = "../shared/datasets/dogs-vs-cats/train.zip"
    assert in_project(mirror, cwd=copy) == project / mirror
    assert in_project(mirror, cwd=project) == project / mirror
    assert project_root(copy) == project


def test_absolute_and_home_paths_are_kept(tmp_path):
    assert in_project(tmp_path / "w.h5", cwd=tmp_path) == tmp_path / "w.h5"
    assert in_project("~/w.h5", cwd=tmp_path) == Path.home() / "w.h5"
