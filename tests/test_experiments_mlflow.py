"""Queued DVC experiments in MLflow, end to end with the real `dvc` and `mlflow`.

A throw-away copy of the repository on tiny data runs `dvc repro`, then two
queued experiments with `dvc queue start -j 2`. Each execution must sit under
its own parent run with one child per stage that ran, no experiment may move
an alias, and the MLflow UI, rendered in headless Chromium, must show the
parents with their children and compare the two experiments. Screenshots go
to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from catsdogs.core.config import TRAINING_STAGES
from catsdogs.serving import ui
from catsdogs.tracking.mlflow_runs import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from catsdogs.tracking.parent_runs import EXECUTION_TAG

from conftest import make_repo_copy, run
from test_ui import ARTIFACTS, DevTools, ui_over

pytestmark = pytest.mark.slow

EXPERIMENTS = {"ep1": 1, "ep3": 3}  # name -> scratch_cnn.epochs (the workspace has 2)
QUEUE_TIMEOUT_SECONDS = 900


def wait_for_queue(repo: Path, names: list[str]) -> None:
    """Waits until every named experiment of the queue succeeded; fails with its log otherwise."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    while True:
        status = run(["dvc", "queue", "status"], repo).stdout
        rows = {line.split()[1]: line.split()[-1] for line in status.splitlines() if len(line.split()) >= 4 and line.split()[1] in names}
        failed = [name for name, state in rows.items() if state == "Failed"]
        if failed:
            logs = run(["dvc", "queue", "logs", failed[0]], repo).stdout
            pytest.fail(f"queued experiment {failed[0]} failed:\n{logs[-4000:]}")
        if len(rows) == len(names) and all(state == "Success" for state in rows.values()):
            return
        if time.monotonic() > deadline:
            run(["dvc", "queue", "kill", *names], repo)
            pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_SECONDS} s:\n{status}")
        time.sleep(5)


def aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(REGISTERED_MODEL_NAME).aliases.items()}


@pytest.fixture(scope="module")
def executed(tmp_path_factory, mirror_sample_zip):
    """The repository copy after `dvc repro` and two experiments queued and run two at a time."""
    repo = make_repo_copy(tmp_path_factory.mktemp("experiments") / "repo", mirror_sample_zip)
    run(["git", "branch", "-m", "main"], repo)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "the workspace's run"], repo)
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    before = aliases(client)

    for name, epochs in EXPERIMENTS.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"scratch_cnn.epochs={epochs}"], repo)
    started = time.monotonic()
    run(["dvc", "queue", "start", "-j", "2"], repo, log=tmp_path_factory.mktemp("queue") / "queue-start.log")
    try:
        wait_for_queue(repo, list(EXPERIMENTS))
    finally:
        run(["dvc", "queue", "stop"], repo)  # idle workers exit; running ones finish first
    print(f"\ntwo queued experiments ran in {time.monotonic() - started:.0f} s with -j 2")

    experiment_id = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
    return {"repo": repo, "client": client, "experiment_id": experiment_id, "aliases_before": before}


def parent_of(executed, name: str):
    found = executed["client"].search_runs(
        [executed["experiment_id"]],
        filter_string=f"tags.`dvc.exp_name` = '{name}' and tags.`pipeline.kind` = 'dvc exp run'",
    )
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


def children_of(executed, parent_id: str):
    return executed["client"].search_runs(
        [executed["experiment_id"]], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'"
    )


def test_no_experiment_moves_an_alias(executed):
    client = executed["client"]
    assert aliases(client) == executed["aliases_before"]
    assert set(executed["aliases_before"]) == {*TRAINING_STAGES, "champion"}
    # The aliases stay on the versions of the workspace's own run, and each
    # experiment registered its own scratch_cnn version, tagged with its name.
    (workspace,) = client.search_runs([executed["experiment_id"]], filter_string="tags.`pipeline.kind` = 'dvc repro'")
    scratch = client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "scratch_cnn")
    assert client.get_run(scratch.run_id).data.tags[MLFLOW_PARENT_RUN_ID] == workspace.info.run_id
    tagged = client.search_model_versions(f"name = '{REGISTERED_MODEL_NAME}'")
    by_experiment = sorted((v.tags.get("dvc.exp_name"), v.tags.get("dvc.stage")) for v in tagged if v.tags.get("dvc.exp_name"))
    assert by_experiment == [("ep1", "scratch_cnn"), ("ep3", "scratch_cnn")]


def test_each_experiment_has_its_own_parent_with_the_stages_that_ran(executed):
    parents = {name: parent_of(executed, name) for name in EXPERIMENTS}
    assert parents["ep1"].data.tags[EXECUTION_TAG] != parents["ep3"].data.tags[EXECUTION_TAG]
    head = run(["git", "rev-parse", "HEAD"], executed["repo"]).stdout.strip()
    for name, parent in parents.items():
        tags = parent.data.tags
        assert parent.info.run_name == name and parent.info.status == "FINISHED"
        assert tags["git.commit"] == head
        assert len(tags["params.sha256"]) == 64
        assert tags["params.baseline"] == "main" and tags["params.changed"] == "scratch_cnn.epochs"
        assert parent.data.params == {"scratch_cnn.epochs": str(EXPERIMENTS[name])}
        for stage in TRAINING_STAGES:
            assert 0 <= parent.data.metrics[f"{stage}.test_accuracy"] <= 1
        # Only the stages the override touched ran in the experiment.
        stages = sorted(child.data.tags["dvc.stage"] for child in children_of(executed, parent.info.run_id))
        assert stages == ["evaluate", "scratch_cnn"]
    assert parents["ep1"].data.tags["params.sha256"] != parents["ep3"].data.tags["params.sha256"]


def test_the_workspace_run_is_one_parent_of_every_tracked_stage(executed):
    client = executed["client"]
    (workspace,) = client.search_runs([executed["experiment_id"]], filter_string="tags.`pipeline.kind` = 'dvc repro'")
    assert workspace.info.run_name.startswith("repro ") and "dvc.exp_name" not in workspace.data.tags
    children = children_of(executed, workspace.info.run_id)
    assert sorted(c.data.tags["dvc.stage"] for c in children) == sorted([*TRAINING_STAGES, "evaluate"])
    assert workspace.data.tags["params.changed"] == "none" and workspace.data.params == {}
    (used,) = next(c for c in children if c.data.tags["dvc.stage"] == "fine_tune").inputs.dataset_inputs
    assert used.dataset.name == "small-dataset"
    # Every run of the store is a parent or the child of one.
    everything = client.search_runs([executed["experiment_id"]])
    assert len(everything) == 1 + len(children) + len(EXPERIMENTS) * (1 + 2)


@pytest.fixture(scope="module")
def ui_url(executed, tmp_path_factory):
    with ui_over(executed["repo"], tmp_path_factory.mktemp("ui")) as url:
        yield url


# The expand/collapse button of a parent run in the runs table.
EXPAND_BUTTON = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'


def test_experiment_page_shows_each_execution_as_a_parent_of_its_stages(executed, ui_url, tmp_path):
    client = executed["client"]
    parents = client.search_runs([executed["experiment_id"]], filter_string=f"tags.`{EXECUTION_TAG}` LIKE '%'")
    assert len(parents) == 1 + len(EXPERIMENTS)
    total = len(client.search_runs([executed["experiment_id"]]))
    browser = DevTools(tmp_path / "profile")
    try:
        browser.open(ui.experiment_url(ui_url, executed["experiment_id"]), f"{total} matching runs")
        folded = browser.wait_for(parents[0].info.run_name)  # the rows come after the count
        # Folded, the table lists the parents only.
        assert all(p.info.run_name in folded for p in parents) and "fine_tune" not in folded, folded[:2000]
        clicked = browser.evaluate(f"[...document.querySelectorAll('{EXPAND_BUTTON}')].map(b => b.click()).length")
        assert clicked == len(parents)
        browser.wait_for("fine_tune")
        time.sleep(1)  # let the rows finish painting
        browser.screenshot(ARTIFACTS / "ui-experiment-parent-runs.png")
        unfolded = browser.evaluate("document.body.innerText")
    finally:
        browser.close()
    rows = [line.strip() for line in unfolded.splitlines()]
    for stage in TRAINING_STAGES:
        assert rows.count(stage) == 1 + (stage == "scratch_cnn") * len(EXPERIMENTS), (stage, unfolded[:3000])
    assert rows.count("evaluate") == 1 + len(EXPERIMENTS)


def test_compare_view_shows_two_experiments_side_by_side(executed, ui_url, tmp_path):
    parents = [parent_of(executed, name) for name in EXPERIMENTS]
    ids = [p.info.run_id for p in parents]
    url = (
        f"{ui_url}/#/compare-runs?runs={json.dumps(ids, separators=(',', ':'))}"
        f"&experiments={json.dumps([executed['experiment_id']])}"
    )
    browser = DevTools(tmp_path / "profile")
    try:
        # Tall enough for the params and metrics tables under the plots.
        browser.open(url, "augmented_cnn.test_accuracy", height=2600)
        time.sleep(1)
        browser.screenshot(ARTIFACTS / "ui-compare-experiments.png")
        text = " ".join(browser.evaluate("document.body.innerText").split())
    finally:
        browser.close()
    # One column per experiment, in the order asked: names, changed params, test metrics.
    assert f"Run Name: {' '.join(EXPERIMENTS)}" in text, text[:3000]
    assert f"scratch_cnn.epochs {' '.join(str(e) for e in EXPERIMENTS.values())}" in text, text[:3000]
    # The metrics table scrolls inside its box and renders its first rows only
    # (every model's metrics on the parents are checked through the API above).
    assert "augmented_cnn.test_accuracy" in text and "fine_tune.ms_per_image" in text, text[:3000]
