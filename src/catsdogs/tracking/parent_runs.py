"""One MLflow parent run per pipeline execution, the stages' runs its children.

Stages are separate processes, so each finds its parent by the execution's
key (see :mod:`catsdogs.tracking.execution`), tagged ``pipeline.execution``, and the
first stage of an execution creates it. The parent carries what tells two
executions apart: the git commit, the DVC experiment's name, the digest of
``params.yaml`` and the params that differ from the ``main`` branch (as
params, so that the UI's Compare view lines them up); ``evaluate`` adds every
model's test metrics. It is RUNNING while one of its stages runs and ends
with the status of the last one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.entities import Param, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from catsdogs.tracking import execution as executions
from catsdogs.tracking.execution import Execution

EXECUTION_TAG = "pipeline.execution"
# Tags a stage's run shares with its parent.
SHARED_TAGS = ("git.commit", "git.code_dirty", "dvc.exp_name")
# MLflow keeps a param value to 6,000 characters; a changed list of sources stays far below.
MAX_PARAM_CHARS = 6000


def parent_name(execution: Execution) -> str:
    """The parent run's name: the experiment's, or ``repro <date time>`` for ``dvc repro``."""
    if execution.experiment:
        return execution.experiment
    return time.strftime("repro %Y-%m-%d %H:%M:%S", time.localtime(execution.started))


def parent_params_and_tags(
    execution: Execution, project: Path, params_file: Path, params_sha256: str, shared: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """What the parent records when it is created.

    Args:
        execution: the pipeline execution.
        project: the project's git work tree (where ``main`` is).
        params_file: the params.yaml the stages read (an experiment's copy's own).
        params_sha256: its SHA-256.
        shared: the first stage's tags (see :data:`SHARED_TAGS`).

    Returns:
        ``(params, tags)``: the params that differ from the baseline, and
        the tags ``pipeline.*``, ``params.*`` and the shared ones.
    """
    tags = {key: shared[key] for key in SHARED_TAGS if key in shared}
    tags.update({
        EXECUTION_TAG: execution.key,
        "pipeline.kind": "dvc exp run" if execution.experiment else "dvc repro",
        "pipeline.command": execution.command,
        "params.sha256": params_sha256,
    })
    baseline = executions.baseline_params(project, params_file.name)
    params: dict[str, str] = {}
    if baseline is None:
        tags["params.baseline"] = "none"
        return params, tags
    revision, text = baseline
    current = executions.flat_params(params_file.read_text(encoding="utf-8"))
    changed = executions.changed_params(executions.flat_params(text), current)
    tags["params.baseline"] = revision
    tags["params.changed"] = ", ".join(changed) or "none"
    for key, (_, value) in changed.items():
        params[key] = str(value)[:MAX_PARAM_CHARS]
    return params, tags


def find_parent(client: mlflow.MlflowClient, experiment_id: str, key: str) -> str | None:
    """The oldest run tagged with this execution's key, or None.

    Two processes that each created one agree on the oldest (equal start
    times: the smaller id), the same choice in every process.
    """
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{EXECUTION_TAG}` = '{key}'",
        order_by=["attributes.start_time ASC"],
        max_results=10,
    )
    found = sorted(found, key=lambda run: (run.info.start_time, run.info.run_id))
    return found[0].info.run_id if found else None


def open_parent(
    client: mlflow.MlflowClient,
    experiment_id: str,
    *,
    project: Path,
    params_file: Path,
    params_sha256: str,
    shared: Mapping[str, str],
    execution: Execution | None = None,
) -> str:
    """Finds or creates the current execution's parent run and marks it RUNNING.

    Two processes of one execution creating it at once both search again
    after creating: the oldest run wins and the other is deleted, so every
    stage ends up under the same parent.

    Args:
        client: the MLflow client of the project's store.
        experiment_id: the ``cats-vs-dogs`` experiment.
        project: the project's git work tree.
        params_file: the params.yaml the stage reads.
        params_sha256: its digest.
        shared: the stage's tags; those in :data:`SHARED_TAGS` go to the parent.
        execution: the execution; found from the process tree by default.

    Returns:
        The parent run's id.
    """
    execution = executions.current_execution() if execution is None else execution
    parent = find_parent(client, experiment_id, execution.key)
    if parent is None:
        params, tags = parent_params_and_tags(execution, project, params_file, params_sha256, shared)
        created = client.create_run(
            experiment_id, tags=tags, run_name=parent_name(execution)
        ).info.run_id
        client.log_batch(created, params=[Param(key, value) for key, value in params.items()])
        parent = find_parent(client, experiment_id, execution.key)
        if parent != created:
            client.delete_run(created)
    client.update_run(parent, status=RunStatus.to_string(RunStatus.RUNNING))
    return parent


def newest_parent_tags(client: mlflow.MlflowClient, experiment_id: str, experiment: str) -> dict[str, str] | None:
    """The tags of the newest parent run of the DVC experiment named ``experiment``, or None."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`dvc.exp_name` = '{experiment}' and tags.`pipeline.kind` = 'dvc exp run'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return dict(found[0].data.tags) if found else None


def child_tags(parent_id: str) -> dict[str, str]:
    """The tag that makes a run a child of ``parent_id`` in MLflow's UI and API."""
    return {MLFLOW_PARENT_RUN_ID: parent_id}


def close_parent(client: mlflow.MlflowClient, parent_id: str, child_id: str) -> None:
    """Ends the parent with its last child's status (FINISHED, FAILED or KILLED) and end time."""
    child = client.get_run(child_id).info
    status = child.status if child.status != RunStatus.to_string(RunStatus.RUNNING) else "FINISHED"
    client.set_terminated(parent_id, status=status, end_time=child.end_time or int(time.time() * 1000))
