"""dvc.lock is the lock of a real run of the code and params in the
repository, and the committed metrics and plots are that run's.

The lead commits dvc.lock, metrics/ and plots/ from one ``make run`` of the
final code; until then, and after any change to a stage's code or params,
these tests fail by design, naming what no longer matches. They never skip;
they run last (marker ``run_record``) so that ``pytest -x`` reaches them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dvc.repo import Repo

from conftest import ROOT, run

REMAKE = "run `make run` (or `dvc repro`) and commit dvc.lock, metrics/ and plots/"


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``2e-05`` (no dot) is a string; DVC writes
    dvc.lock as YAML 1.2, where it is the float in params.yaml's ``0.00002``."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_Yaml12Loader)


def lock_mismatches(root: Path) -> list[str]:
    """What in ``root/dvc.lock`` no longer matches ``dvc.yaml``, the code, the params or the committed record.

    DVC itself compares every stage (``foreach`` ones expanded) with the lock:
    command, code deps (package folders included), params, and the
    ``cache: false`` outputs Git versions (the metrics and plots). What a
    fresh clone lacks by design is not a mismatch: the photos, features and
    models other stages make, and cached outputs not pulled.

    Returns:
        One line per mismatch, empty when the lock describes the repository.
    """
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return [f"{lock_path} is missing: {REMAKE}"]
    locked = _load(lock_path).get("stages", {})
    problems = []
    with Repo(str(root)) as repo, repo.lock:
        stages = list(repo.index.stages)
        made = {out.def_path for stage in stages for out in stage.outs}
        cached = {out.def_path for stage in stages for out in stage.outs if out.use_cache}
        for stage in stages:
            if stage.name not in locked:
                problems.append(f"{stage.name}: not in dvc.lock")
                continue
            for change in next(iter(stage.status().values()), []):  # keyed by a cwd-relative address
                if isinstance(change, str):  # "changed command", "always changed"
                    problems.append(f"{stage.name}: {change}")
                    continue
                for kind, paths in change.items():
                    for path, what in paths.items():
                        if isinstance(what, dict):  # a params file: {key: change}
                            problems.extend(f"{stage.name}: {kind}: param {key} {w}" for key, w in what.items())
                            continue
                        absent_by_design = (
                            (kind == "changed deps" and what == "deleted" and _under(path, made))
                            or (kind == "changed outs" and path in cached and what in ("deleted", "not in cache"))
                        )
                        if not absent_by_design:
                            problems.append(f"{stage.name}: {kind}: {path} {what}")
    return problems


def _under(path: str, outputs: set[str]) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outputs)


@pytest.mark.run_record
def test_the_committed_lock_matches_the_code_params_and_metrics():
    problems = lock_mismatches(ROOT)
    assert not problems, f"dvc.lock does not describe this repository ({REMAKE}):\n" + "\n".join(problems)


# The check itself, against a lock the real dvc writes.
SCRIPT = """import json, yaml
p = yaml.safe_load(open("params.yaml"))
json.dump({"score": p["train"]["epochs"] / 10}, open("metrics/score.json", "w"))
"""


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "train.py").write_text(SCRIPT)
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 3\n  seed: 1\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python train.py\n    deps: [train.py]\n    params: [train.epochs]\n"
        "    metrics:\n      - metrics/score.json:\n          cache: false\n"
    )
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    run(["dvc", "repro", "-q"], tmp_path)
    return tmp_path


def test_a_fresh_lock_matches(tiny_project):
    assert lock_mismatches(tiny_project) == []
    assert json.loads((tiny_project / "metrics" / "score.json").read_text()) == {"score": 0.3}


def test_changed_code_params_or_metrics_are_each_named(tiny_project):
    (tiny_project / "train.py").write_text(SCRIPT + "# a comment\n")
    (tiny_project / "params.yaml").write_text("train:\n  epochs: 4\n  seed: 2\n")  # seed is not a dep
    (tiny_project / "metrics" / "score.json").write_text('{"score": 0.9}')

    assert lock_mismatches(tiny_project) == [
        "train: changed deps: train.py modified",
        "train: changed deps: param train.epochs modified",
        "train: changed outs: metrics/score.json modified",
    ]


def test_a_missing_lock_or_a_new_dep_fails_clearly(tiny_project):
    dvc_yaml = (tiny_project / "dvc.yaml").read_text()
    (tiny_project / "helper.py").write_text("")
    (tiny_project / "dvc.yaml").write_text(dvc_yaml.replace("deps: [train.py]", "deps: [train.py, helper.py]"))
    assert lock_mismatches(tiny_project) == ["train: changed deps: helper.py modified"]

    (tiny_project / "dvc.lock").unlink()
    assert lock_mismatches(tiny_project) == [f"{tiny_project / 'dvc.lock'} is missing: {REMAKE}"]


@pytest.mark.run_record
def test_the_readme_results_table_is_the_committed_metrics():
    from catsdogs.core.config import TRAINING_STAGES

    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in TRAINING_STAGES:
            rows[cells[0]] = cells
    assert sorted(rows) == sorted(TRAINING_STAGES), "the Results table lists every model once"
    for stage, cells in rows.items():
        path = ROOT / "metrics" / f"{stage}.json"
        assert path.is_file(), f"{path} is missing: {REMAKE}"
        metrics = json.loads(path.read_text())
        best_val, test = cells[1], cells[2]
        assert best_val == f"{metrics['best_val_accuracy']:.3f}", f"{stage}: README says {best_val}, {path} {metrics['best_val_accuracy']}"
        expected = f"**{metrics['test_accuracy']:.3f}** (champion)" if metrics["champion"] else f"{metrics['test_accuracy']:.3f}"
        assert test == expected, f"{stage}: README says {test}, {path} {metrics['test_accuracy']} (champion: {metrics['champion']})"
