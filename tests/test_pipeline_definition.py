"""dvc.yaml is honest: scripts, deps and params it names exist, every
package module a stage runs lies under one of its dependencies, and the
study's registry, params.yaml and dvc.yaml agree."""

import ast
import re
from dataclasses import fields
import subprocess
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo
from dvc.stage.serialize import to_pipeline_file

from catsdogs.core import study
from catsdogs.core.config import TRAINING_STAGES, Params

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _resolved_stages() -> dict[str, dict]:
    """Every stage as DVC reads dvc.yaml: ``foreach`` templates expanded (``cnn@scratch_cnn``)."""
    with Repo(str(ROOT)) as repo:
        return {stage.name: to_pipeline_file(stage)[stage.name] for stage in repo.index.stages}


STAGES = _resolved_stages()
OUTPUTS = {
    out if isinstance(out, str) else next(iter(out))
    for stage in STAGES.values()
    for kind in ("outs", "metrics", "plots")
    for out in stage.get(kind, [])
}


def _run_name(name: str) -> str:
    """The name a stage records itself under: the model for a template's stage."""
    return name.split("@", 1)[-1]


def _script(stage: dict) -> Path:
    match = re.match(r"python (stages/\S+\.py)", stage["cmd"])
    assert match, f"stage command does not run a stage script: {stage['cmd']}"
    return ROOT / match.group(1)


def _catsdogs_imports(path: Path, seen: set[str]) -> set[str]:
    """Package modules ``path`` imports, directly or through other modules."""
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("catsdogs"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("catsdogs")]
        for name in names:
            module = ROOT / "src" / (name.replace(".", "/") + ".py")
            if module.exists() and name not in seen:
                seen.add(name)
                _catsdogs_imports(module, seen)
    return seen


def _param_keys(stage: dict) -> list[str]:
    keys = []
    for item in stage.get("params", []):
        keys.extend(item if isinstance(item, dict) else [item])
    return keys


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_script_and_deps_exist(name):
    stage = STAGES[name]
    script = _script(stage)
    assert script.exists(), script
    deps = stage.get("deps", [])
    assert str(script.relative_to(ROOT)) in deps, f"{name}: its script is not a dependency"
    for dep in deps:
        made = any(dep == out or dep.startswith(out + "/") for out in OUTPUTS)
        assert (ROOT / dep).exists() or made, f"{name}: dependency {dep} neither exists nor is made by a stage"


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_the_package_code_it_runs(name):
    stage = STAGES[name]
    modules = _catsdogs_imports(_script(stage), set())
    needed = {f"src/{m.replace('.', '/')}.py" for m in modules}
    missing = sorted(path for path in needed if not _covered(path, stage.get("deps", [])))
    assert not missing, f"{name}: runs {missing} but no dep covers them"


def test_the_code_check_sees_a_module_outside_the_deps():
    assert _covered("src/catsdogs/data/inputs.py", ["src/catsdogs/core", "src/catsdogs/data"])
    assert not _covered("src/catsdogs/tracking/mlflow_runs.py", ["src/catsdogs/core", "src/catsdogs/data"])
    assert not _covered("src/catsdogs/database.py", ["src/catsdogs/data"])


def test_dvc_ignores_bytecode_so_it_never_changes_a_code_hash():
    ignore = (ROOT / ".dvcignore").read_text().splitlines()
    assert "__pycache__/" in ignore and "*.pyc" in ignore


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_exist(name):
    for key in _param_keys(STAGES[name]):
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{name}: params key {key} is not in params.yaml"
            node = node[part]


def test_mlruns_is_never_a_dvc_output():
    for name, stage in STAGES.items():
        for out in stage.get("outs", []):
            path = out if isinstance(out, str) else next(iter(out))
            assert not path.startswith("mlruns"), name


def _declared(stage: dict, kind: str) -> dict[str, dict]:
    """``{path: options}`` of a stage's ``outs``, ``metrics`` or ``plots``."""
    return {
        (item if isinstance(item, str) else next(iter(item))): ({} if isinstance(item, str) else next(iter(item.values())))
        for item in stage.get(kind, [])
    }


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_its_timing_output(name):
    outs = _declared(STAGES[name], "outs")
    path = f"metrics/timings/{_run_name(name)}.json"
    assert path in outs, f"{name}: run_stage writes its timing but dvc.yaml does not declare it"
    assert outs[path].get("cache") is False, f"{name}: {path} belongs in Git with the other run records"


def test_metrics_and_plots_are_versioned_in_git():
    # Experiments, `dvc metrics diff` and `dvc plots diff` read them from each commit.
    for name, stage in STAGES.items():
        for kind in ("outs", "metrics", "plots"):
            for path, options in _declared(stage, kind).items():
                if path.startswith(("metrics/", "plots/")):
                    assert options.get("cache") is False, f"{name}: {path} must be cache: false"
    ignored = subprocess.run(
        ["git", "check-ignore", "metrics/scratch_cnn.json", "plots/scratch_cnn/history.csv", "dvc.lock"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert ignored.stdout == "", f".gitignore hides the run's record: {ignored.stdout}"


def test_the_only_dvc_metrics_are_one_headline_file_per_model():
    declared = {name: list(_declared(stage, "metrics")) for name, stage in STAGES.items() if stage.get("metrics")}
    assert {name: sorted(paths) for name, paths in declared.items()} == {
        "evaluate": sorted(f"metrics/{stage}.json" for stage in TRAINING_STAGES)
    }
    # DVC sorts a resolved stage's outputs; dvc.yaml itself lists them in pipeline order.
    assert list(_declared(DVC["stages"]["evaluate"], "metrics")) == [f"metrics/{stage}.json" for stage in TRAINING_STAGES]


def test_stage_script_runs_through_run_stage_with_its_own_name():
    for name, stage in STAGES.items():
        script = _script(stage)
        if script.name == "train.py":  # the one entry point of every training stage
            assert stage["cmd"].split()[2] == _run_name(name), name
            assert "run_stage(args.name," in script.read_text()
        else:
            assert f'run_stage("{name}", main)' in script.read_text(), name


def _covering_keys(keys: list[str]) -> set[str]:
    """Params keys without those a listed section already covers (``base.seed`` beside ``base``)."""
    return {key for key in keys if not any(key.startswith(other + ".") for other in keys)}


@pytest.mark.parametrize("model", study.NAMES)
def test_registry_params_and_dvc_yaml_agree(model):
    spec = study.model(model)
    stage = STAGES[spec.dvc_stage]
    assert f"models/{model}.keras" in _declared(stage, "outs")
    assert _covering_keys(_param_keys(stage)) == set(spec.sections), f"{spec.dvc_stage}: params differ from the registry's"
    assert model in PARAMS and model in {f.name for f in fields(Params)}
    for source in spec.starts:
        if source != "none":
            assert f"models/{source}.keras" in stage["deps"], f"{spec.dvc_stage}: may start from {source} but does not depend on it"
    assert spec.start_param is None or spec.start_param in PARAMS[model]


def test_every_training_stage_is_a_model_of_the_registry():
    trained = {_run_name(name) for name, stage in STAGES.items() if _script(stage).name == "train.py"}
    assert trained == set(study.NAMES) == set(TRAINING_STAGES)
    assert [m.name for m in study.MODELS] == list(TRAINING_STAGES)


def test_dvc_yaml_reads_in_one_screen_per_stage_family():
    text = (ROOT / "dvc.yaml").read_text()
    assert len(text.splitlines()) < 200
    assert set(DVC["stages"]["cnn"]["foreach"]) == set(study.FROM_SCRATCH)
