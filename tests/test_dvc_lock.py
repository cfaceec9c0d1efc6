"""dvc.lock is the lock of a real run of the code and params in the
repository, and the committed metrics and plots are that run's.

The lead commits dvc.lock, metrics/ and plots/ from one ``make run`` of the
final code; until then, and after any change to a stage's code or params,
these tests fail by design, naming what no longer matches. They never skip;
they run last (marker ``run_record``) so that ``pytest -x`` reaches them.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, run

REMAKE = "run `make run` (or `dvc repro`) and commit dvc.lock, metrics/ and plots/"


def file_md5(path: Path) -> str:
    """The digest DVC 3 records for a file (``hash: md5``): the MD5 of its bytes."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def _declared(items: list) -> list[str]:
    return [item if isinstance(item, str) else next(iter(item)) for item in items]


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


def _param_value(params: dict, key: str) -> Any:
    node = params
    for part in key.split("."):
        node = node[part]
    return node


def lock_mismatches(root: Path) -> list[str]:
    """What in ``root/dvc.lock`` no longer matches ``dvc.yaml``, the code, the params or the committed record.

    For every stage of dvc.yaml: the lock has it with the same command and
    the same deps; every dep that no stage makes (code, scripts) has the
    lock's MD5; every param the stage reads has the lock's value; and every
    ``cache: false`` output present in the repository (the metrics and plots
    Git versions) has the lock's MD5.

    Returns:
        One line per mismatch, empty when the lock describes the repository.
    """
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return [f"{lock_path} is missing: {REMAKE}"]
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = _load(root / "params.yaml")
    locked = _load(lock_path).get("stages", {})
    made = {path for stage in pipeline.values() for kind in ("outs", "metrics", "plots") for path in _declared(stage.get(kind, []))}
    problems = []
    for name, stage in pipeline.items():
        lock = locked.get(name)
        if lock is None:
            problems.append(f"{name}: not in dvc.lock")
            continue
        if " ".join(stage["cmd"].split()) != " ".join(lock["cmd"].split()):
            problems.append(f"{name}: command differs from dvc.lock's")
        lock_deps = {dep["path"]: dep for dep in lock.get("deps", [])}
        if set(lock_deps) != set(stage.get("deps", [])):
            problems.append(f"{name}: deps differ from dvc.lock's: {sorted(set(lock_deps) ^ set(stage.get('deps', [])))}")
        for path, dep in lock_deps.items():
            is_output = any(path == out or path.startswith(out + "/") for out in made)
            if is_output or "md5" not in dep:
                continue
            if not (root / path).is_file():
                problems.append(f"{name}: dep {path} is missing")
            elif file_md5(root / path) != dep["md5"]:
                problems.append(f"{name}: {path} changed since the run dvc.lock records")
        lock_params = lock.get("params", {}).get("params.yaml", {})
        for key in _declared(stage.get("params", [])):
            try:
                value = _param_value(params, key)
            except (KeyError, TypeError):
                problems.append(f"{name}: param {key} is not in params.yaml")
                continue
            if key not in lock_params or lock_params[key] != value:
                problems.append(f"{name}: param {key} differs from dvc.lock's")
        outs = {out["path"]: out for out in lock.get("outs", [])}
        for kind in ("outs", "metrics", "plots"):
            for item in stage.get(kind, []):
                if isinstance(item, str) or next(iter(item.values())).get("cache", True):
                    continue
                path = next(iter(item))
                if path not in outs:
                    problems.append(f"{name}: output {path} is not in dvc.lock")
                elif not (root / path).is_file():
                    problems.append(f"{name}: {path} is missing (the committed record of the run)")
                elif file_md5(root / path) != outs[path]["md5"]:
                    problems.append(f"{name}: {path} is not the output dvc.lock records")
    return problems


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
        "train: train.py changed since the run dvc.lock records",
        "train: param train.epochs differs from dvc.lock's",
        "train: metrics/score.json is not the output dvc.lock records",
    ]


def test_a_missing_lock_or_a_new_dep_fails_clearly(tiny_project):
    dvc_yaml = (tiny_project / "dvc.yaml").read_text()
    (tiny_project / "helper.py").write_text("")
    (tiny_project / "dvc.yaml").write_text(dvc_yaml.replace("deps: [train.py]", "deps: [train.py, helper.py]"))
    assert lock_mismatches(tiny_project) == ["train: deps differ from dvc.lock's: ['helper.py']"]

    (tiny_project / "dvc.lock").unlink()
    assert lock_mismatches(tiny_project) == [f"{tiny_project / 'dvc.lock'} is missing: {REMAKE}"]


@pytest.mark.run_record
def test_the_readme_results_table_is_the_committed_metrics():
    from catsdogs.config import TRAINING_STAGES

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
