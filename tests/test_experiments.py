"""The experiment loop with the real dvc, in a throw-away copy of the
repository on tiny data: a temporary experiment reading the mirror through a
relative path, the DVC remote between two clones, and a grid of two queued
experiments run two at a time, compared, applied, branched and removed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from catsdogs.core.config import TRAINING_STAGES
from catsdogs.core.study import dvc_stage
from catsdogs.experiments.compare import WIDTH
from catsdogs.tracking.mlflow_runs import EXPERIMENT_NAME

from conftest import make_repo_copy, run

pytestmark = pytest.mark.slow

QUEUE_TIMEOUT_SECONDS = 1500
UPSTREAM = ("download", "build_small_dataset", "vgg16_bottleneck")
ONE_MODEL_KEEP = "Experiment|metrics/scratch_cnn.json:test_accuracy|scratch_cnn.epochs"


@pytest.fixture(scope="module")
def project(tmp_path_factory, mirror_sample_zip) -> Path:
    """A copy whose params name the mirror ``../shared/...`` as the real ones do,
    after one ``dvc repro`` committed with its lock, metrics and plots."""
    base = tmp_path_factory.mktemp("loop")
    (base / "shared").mkdir()
    shutil.copy(mirror_sample_zip, base / "shared" / "train-sample.zip")
    copy = make_repo_copy(base / "project", mirror_sample_zip, mirror_location="../shared/train-sample.zip")
    run(["git", "branch", "-M", "main"], copy)  # as the README's commands name it
    run(["dvc", "repro"], copy)
    run(["git", "add", "-A"], copy)
    run(["git", "commit", "-qm", "the run of record"], copy)
    return copy


def exp_show(cwd: Path) -> list[dict]:
    return json.loads(run(["dvc", "exp", "show", "--json"], cwd).stdout)


def experiments(cwd: Path) -> dict[str, dict]:
    """``{name: {"state", "params", "metrics"}}`` of HEAD's experiments, from dvc exp show --json."""
    found = {}
    for commit in exp_show(cwd):
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                found[rev["name"]] = {
                    "state": (exp.get("executor") or {}).get("state") or "success",
                    "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                    "metrics": {path: m.get("data") for path, m in (data.get("metrics") or {}).items()},
                }
    return found


def headline(cwd: Path) -> dict[str, dict]:
    return {m: json.loads((cwd / "metrics" / f"{m}.json").read_text()) for m in TRAINING_STAGES}


def ran_and_skipped(output: str) -> tuple[set[str], set[str]]:
    stages = ("download", "build_small_dataset", *TRAINING_STAGES, "vgg16_bottleneck", "evaluate")
    # DVC prints the template's stage names (cnn@scratch_cnn); these sets hold the models'.
    ran = {s for s in stages if f"Running stage '{dvc_stage(s)}'" in output}
    skipped = {s for s in stages if f"Stage '{dvc_stage(s)}' didn't change, skipping" in output}
    return ran, skipped


def test_temp_experiment_reads_the_mirror_by_its_relative_path_and_reruns_only_what_changed(project):
    done = run(["dvc", "exp", "run", "--temp", "-n", "rel-mirror", "-S", "download.max_entry_mb=65"], project)
    # The download ran in .dvc/tmp/exps/standalone/..., where ../shared does not exist.
    ran, skipped = ran_and_skipped(done.stdout)
    assert ran == {"download"}, done.stdout[-3000:]
    assert skipped == {"build_small_dataset", "vgg16_bottleneck", *TRAINING_STAGES, "evaluate"}, done.stdout[-3000:]
    exp = experiments(project)["rel-mirror"]
    assert exp["params"]["download"]["max_entry_mb"] == 65
    assert exp["metrics"] == {f"metrics/{m}.json": v for m, v in headline(project).items()}
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}  # the workspace is untouched


def test_push_then_pull_in_a_fresh_clone_trains_nothing_and_shares_experiments(project):
    run(["dvc", "push"], project)
    storage = project.parent / "catsdogs-dvc-storage"  # the default remote: ../../catsdogs-dvc-storage from .dvc/
    assert storage.is_dir() and any(storage.rglob("*")), "dvc push wrote nothing to the default remote"

    clone = project.parent / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], project.parent)
    assert not (clone / "models").exists()
    run(["dvc", "pull"], clone)
    assert json.loads(run(["dvc", "status", "--json"], clone).stdout) == {}
    shown = {p: json.loads(run(["dvc", "metrics", "show", "--json"], p).stdout) for p in (project, clone)}
    assert shown[clone] == shown[project] and len(shown[clone][""]["data"]) == len(TRAINING_STAGES)
    again = run(["dvc", "repro"], clone)
    assert ran_and_skipped(again.stdout)[0] == set(), again.stdout[-3000:]
    assert not (clone / "mlruns").exists(), "the clone trained or evaluated something"

    # An experiment made in one clone reaches the other through Git and the remote.
    run(["dvc", "exp", "run", "-n", "made-here", "-S", "download.max_entry_mb=66"], project)
    run(["git", "checkout", "--", "."], project)  # the workspace run changed params.yaml
    run(["dvc", "checkout", "--force"], project)
    run(["dvc", "exp", "pull", "origin", "made-here"], clone)
    assert experiments(clone)["made-here"]["params"]["download"]["max_entry_mb"] == 66
    run(["dvc", "exp", "run", "-n", "made-there", "-S", "download.max_entry_mb=67"], clone)
    run(["dvc", "exp", "push", "origin", "made-there"], clone)
    assert "made-there" in run(["dvc", "exp", "list", "--name-only"], project).stdout.split()
    assert experiments(project)["made-there"]["metrics"] == experiments(clone)["made-there"]["metrics"]
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}


def wait_for_queue(cwd: Path, timeout: float) -> str:
    """Polls ``dvc queue status`` until no task is queued or running."""
    started = time.monotonic()
    while True:
        status = run(["dvc", "queue", "status"], cwd).stdout
        tasks = [line.split() for line in status.splitlines()[1:] if line.strip() and not line.startswith("Worker")]
        if not any(t[-1] in ("Queued", "Running") for t in tasks if t):
            return status
        if time.monotonic() - started > timeout:
            pytest.fail(f"the queue was still busy after {timeout} s:\n{status}")
        time.sleep(5)


def test_a_grid_of_two_queued_experiments_runs_two_at_a_time(project):
    before = headline(project)
    queued = run(["dvc", "exp", "run", "--queue", "-S", "scratch_cnn.epochs=1,3"], project).stdout
    assert queued.count("Queued experiment") == 2, queued
    started = time.monotonic()
    try:
        run(["dvc", "queue", "start", "-j", "2"], project)
        status = wait_for_queue(project, QUEUE_TIMEOUT_SECONDS)
    finally:
        # Workers leave once the queue is empty; this ends them if a wait failed.
        dvc = str(Path(sys.executable).parent / "dvc")
        subprocess.run([dvc, "queue", "stop", "--kill"], cwd=project, capture_output=True, timeout=120)
    seconds = time.monotonic() - started
    print(f"\ntwo queued experiments, -j 2: {seconds:.0f} s\n{status}")

    by_epochs = {}
    for name, exp in experiments(project).items():
        if exp["params"].get("scratch_cnn", {}).get("epochs") in (1, 3) and exp["params"]["download"]["max_entry_mb"] == 64:
            by_epochs[exp["params"]["scratch_cnn"]["epochs"]] = (name, exp)
    assert sorted(by_epochs) == [1, 3], status
    for epochs, (name, exp) in by_epochs.items():
        assert exp["state"] == "success", (name, exp["state"])
        scratch = exp["metrics"]["metrics/scratch_cnn.json"]
        assert scratch["epochs"] == epochs  # scratch_cnn retrained, then evaluate scored it
        for model in set(TRAINING_STAGES) - {"scratch_cnn"}:  # nothing else retrained
            assert exp["metrics"][f"metrics/{model}.json"]["training_seconds"] == before[model]["training_seconds"]
        log = run(["dvc", "queue", "logs", name], project).stdout
        ran, skipped = ran_and_skipped(log)
        assert ran == {"scratch_cnn", "evaluate"}, log[-3000:]
        assert set(UPSTREAM) <= skipped, log[-3000:]

    # With -j 2 the two trainings overlapped in time.
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    spans = []
    for name, _ in by_epochs.values():
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`dvc.exp_name` = '{name}' and tags.`dvc.stage` = 'scratch_cnn'"
        )
        assert len(runs) == 1, name
        spans.append((runs[0].info.start_time, runs[0].info.end_time))
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a, f"the two scratch_cnn runs did not overlap: {spans}"

    # make compare: main and both experiments, every model's figures, in 120 columns.
    compare = run(["python", "-m", "catsdogs.experiments.compare"], project).stdout
    print(compare)
    assert max(len(line) for line in compare.splitlines()) <= WIDTH
    accuracy_block = compare.split("\n\n")[0]
    for name, _ in by_epochs.values():
        line = next(line for line in accuracy_block.splitlines() if line.strip().startswith(name[:20]))
        assert len([c for c in line.split()[1:] if c != "-"]) == len(TRAINING_STAGES), line
        assert f"scratch_cnn.epochs={[e for e, (n, _) in by_epochs.items() if n == name][0]}" in compare

    # One model's figures fit dvc exp show's own table, as the README shows.
    table = run(
        ["dvc", "exp", "show", "--no-pager", "--drop", ".*", "--keep", ONE_MODEL_KEEP], project, COLUMNS="120"
    ).stdout
    print(table)
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= WIDTH, table
    assert all(any(name in line and "0." in line for line in table.splitlines()) for name, _ in by_epochs.values()), table

    one, three = by_epochs[1][0], by_epochs[3][0]
    # DVC's own comparisons read the experiments' metrics and plots from Git.
    diff = json.loads(run(["dvc", "exp", "diff", "main", one, "--json"], project).stdout)
    assert diff["params"]["params.yaml"]["scratch_cnn.epochs"] == {"old": 2, "new": 1, "diff": -1}
    assert diff["metrics"]["metrics/scratch_cnn.json"]["epochs"]["new"] == 1
    # fine_tune did not rerun: only its prediction time, measured anew by evaluate, may differ.
    assert set(diff["metrics"].get("metrics/fine_tune.json", {})) <= {"ms_per_image"}, diff["metrics"]
    vega = run(["dvc", "plots", "diff", "main", one, "--targets", "plots/scratch_cnn/history.csv", "--show-vega"], project).stdout
    assert f'"{one}"' in vega and '"main"' in vega and "val_accuracy" in vega, vega[:2000]
    run(["dvc", "plots", "diff", "main", one, "-o", str(project.parent / "plots-diff")], project)
    assert one in (project.parent / "plots-diff" / "index.html").read_text()
    try:
        run(["dvc", "exp", "apply", one], project)
        assert yaml.safe_load((project / "params.yaml").read_text())["scratch_cnn"]["epochs"] == 1
        assert headline(project)["scratch_cnn"]["epochs"] == 1
        assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}
        changed = json.loads(run(["dvc", "metrics", "diff", "main", "--json"], project).stdout)
        assert changed["metrics/scratch_cnn.json"]["epochs"] == {"old": 2, "new": 1, "diff": -1}
        run(["dvc", "exp", "branch", three, "three-epochs"], project)
        branch_params = run(["git", "show", "three-epochs:params.yaml"], project).stdout
        assert yaml.safe_load(branch_params)["scratch_cnn"]["epochs"] == 3
        run(["dvc", "exp", "remove", one], project)
        assert one not in run(["dvc", "exp", "list", "--name-only"], project).stdout.split()
    finally:
        run(["git", "checkout", "--", "."], project)
        run(["dvc", "checkout", "--force"], project)
    assert headline(project) == before
