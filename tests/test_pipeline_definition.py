"""dvc.yaml is honest: scripts, deps and params it names exist, and every
package module a stage runs is one of its dependencies."""

import ast
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from catsdogs.config import TRAINING_STAGES

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = DVC["stages"]
OUTPUTS = {
    out if isinstance(out, str) else next(iter(out))
    for stage in STAGES.values()
    for kind in ("outs", "metrics", "plots")
    for out in stage.get(kind, [])
}


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


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_the_package_code_it_runs(name):
    stage = STAGES[name]
    modules = _catsdogs_imports(_script(stage), set())
    needed = {f"src/{m.replace('.', '/')}.py" for m in modules}
    missing = sorted(needed - set(stage.get("deps", [])))
    assert not missing, f"{name}: runs {missing} but does not list them in deps"


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
    path = f"metrics/timings/{name}.json"
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
    assert declared == {"evaluate": [f"metrics/{stage}.json" for stage in TRAINING_STAGES]}


def test_stage_script_runs_through_run_stage_with_its_own_name():
    for name, stage in STAGES.items():
        assert f'run_stage("{name}", main)' in _script(stage).read_text(), name
