"""Copying a tracking store's history into another: the project's
``mlruns/mlflow.db`` into the team's server, for one.

MLflow has no command that moves runs between backends (SQLite and
PostgreSQL here), so this replays them through the client API of both
stores: every experiment, every run (with its name, times, status, tags,
params, the whole history of every metric, dataset inputs and artifacts),
parent runs before their children (the ``mlflow.parentRunId`` tag points
at the copy), every logged model with its artifacts, and the registered
model's versions, their tags and aliases, in version order.

A copied run is tagged ``catsdogs.copied_from`` with its id in the source,
and a second copy into the same target skips what is there already, so an
interrupted copy is finished by running it again.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities import LoggedModelStatus, Metric, Param, ViewType
from mlflow.exceptions import MlflowException

from catsdogs.core.errors import CatsDogsError

COPIED_FROM = "catsdogs.copied_from"
PARENT_TAG = "mlflow.parentRunId"
# log_batch's limits: 1,000 metrics and 100 params per call.
METRICS_PER_CALL, PARAMS_PER_CALL = 1000, 100


class StoreCopyError(CatsDogsError):
    """A store cannot be read or written."""


@dataclass
class CopySummary:
    """What :func:`copy_store` did."""

    experiments: int = 0
    runs: int = 0
    runs_already_there: int = 0
    metric_values: int = 0
    logged_models: int = 0
    model_versions: int = 0
    aliases: int = 0

    def __str__(self) -> str:
        return (
            f"{self.experiments} experiments, {self.runs} runs copied ({self.runs_already_there} already there), "
            f"{self.metric_values} metric values, {self.logged_models} logged models, "
            f"{self.model_versions} model versions, {self.aliases} aliases"
        )


def _pages(search: Callable[[str | None], object]) -> Iterator:
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _copied_runs(target: MlflowClient, experiment_id: str) -> dict[str, str]:
    """Source run id -> target run id, for the runs an earlier copy made."""
    runs = _pages(lambda token: target.search_runs(
        [experiment_id], filter_string=f"tags.`{COPIED_FROM}` != ''", run_view_type=ViewType.ALL, page_token=token,
    ))
    return {run.data.tags[COPIED_FROM]: run.info.run_id for run in runs}


def _copy_run(source: MlflowClient, target: MlflowClient, run, experiment_id: str, ids: dict[str, str]) -> tuple[str, int]:
    tags = {key: value for key, value in run.data.tags.items() if key != PARENT_TAG}
    if PARENT_TAG in run.data.tags and run.data.tags[PARENT_TAG] in ids:
        tags[PARENT_TAG] = ids[run.data.tags[PARENT_TAG]]
    tags[COPIED_FROM] = run.info.run_id
    copy = target.create_run(experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name)
    new_id = copy.info.run_id
    params = [Param(key, value) for key, value in run.data.params.items()]
    for chunk in _chunks(params, PARAMS_PER_CALL):
        target.log_batch(new_id, params=chunk)
    values = [
        Metric(key, m.value, m.timestamp, m.step)
        for key in run.data.metrics
        for m in source.get_metric_history(run.info.run_id, key)
    ]
    for chunk in _chunks(values, METRICS_PER_CALL):
        target.log_batch(new_id, metrics=chunk)
    if run.inputs and run.inputs.dataset_inputs:
        target.log_inputs(new_id, datasets=list(run.inputs.dataset_inputs))
    with tempfile.TemporaryDirectory() as folder:
        if source.list_artifacts(run.info.run_id):
            local = source.download_artifacts(run.info.run_id, "", folder)
            target.log_artifacts(new_id, local)
    target.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)
    return new_id, len(values)


def _copy_logged_models(source: MlflowClient, target: MlflowClient, experiment_id: str, new_experiment: str,
                        ids: dict[str, str], summary: CopySummary) -> dict[str, str]:
    """Copies the experiment's logged models; returns source -> target model id."""
    copied = {
        model.tags[COPIED_FROM]: model.model_id
        for model in target.search_logged_models(experiment_ids=[new_experiment])
        if COPIED_FROM in model.tags
    }
    models = {}
    for model in source.search_logged_models(experiment_ids=[experiment_id]):
        if model.model_id in copied:
            models[model.model_id] = copied[model.model_id]
            continue
        copy = target.create_logged_model(
            new_experiment, name=model.name, source_run_id=ids.get(model.source_run_id),
            tags={**model.tags, COPIED_FROM: model.model_id}, params=model.params, model_type=model.model_type,
        )
        with tempfile.TemporaryDirectory() as folder:
            files = download_artifacts(artifact_uri=f"models:/{model.model_id}", dst_path=folder, tracking_uri=source.tracking_uri)
            target.log_model_artifacts(copy.model_id, files)
        target.finalize_logged_model(copy.model_id, LoggedModelStatus.READY)
        models[model.model_id] = copy.model_id
        summary.logged_models += 1
    return models


def _copy_registry(source: MlflowClient, target: MlflowClient, ids: dict[str, str], models: dict[str, str],
                   summary: CopySummary) -> None:
    for registered in _pages(lambda token: source.search_registered_models(page_token=token)):
        name = registered.name
        try:
            target.get_registered_model(name)
        except MlflowException:
            target.create_registered_model(name, tags=registered.tags, description=registered.description)
        there = {
            version.tags.get(COPIED_FROM): version.version
            for version in target.search_model_versions(f"name = '{name}'")
        }
        versions = sorted(source.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
        numbers = {}
        for version in versions:
            key = f"{name}/{version.version}"
            if key in there:
                numbers[version.version] = there[key]
                continue
            # A version of a logged model has the source models:/<model id> (its model_id may be unset).
            logged = version.model_id or (version.source[len("models:/"):] if version.source.startswith("models:/m-") else None)
            model_id = models.get(logged) if logged else None
            source_uri = f"models:/{model_id}" if model_id else version.source
            copy = target.create_model_version(
                name, source_uri, run_id=ids.get(version.run_id), tags={**version.tags, COPIED_FROM: key},
                description=version.description, model_id=model_id,
            )
            numbers[version.version] = copy.version
            summary.model_versions += 1
        for alias, number in (registered.aliases or {}).items():
            if number in numbers:
                target.set_registered_model_alias(name, alias, numbers[number])
                summary.aliases += 1


def copy_store(source_uri: str, target_uri: str, *, say: Callable[[str], None] = print) -> CopySummary:
    """Copies every experiment, run, logged model and registered version of
    ``source_uri`` into ``target_uri`` (see the module docstring).

    Args:
        source_uri: the store to read, e.g. ``sqlite:///mlruns/mlflow.db``.
        target_uri: the store to write, e.g. ``http://127.0.0.1:5005``.
        say: where progress lines go.

    Raises:
        StoreCopyError: either store cannot be reached or read.
    """
    if source_uri.rstrip("/") == target_uri.rstrip("/"):
        raise StoreCopyError(f"the source and the target are the same store ({source_uri})")
    source = MlflowClient(tracking_uri=source_uri, registry_uri=source_uri)
    target = MlflowClient(tracking_uri=target_uri, registry_uri=target_uri)
    summary = CopySummary()
    ids: dict[str, str] = {}
    models: dict[str, str] = {}
    try:
        experiments = list(_pages(lambda token: source.search_experiments(view_type=ViewType.ALL, page_token=token)))
        for experiment in experiments:
            runs = list(_pages(lambda token: source.search_runs(
                [experiment.experiment_id], run_view_type=ViewType.ALL, order_by=["attributes.start_time ASC"], page_token=token,
            )))
            if not runs and experiment.name == "Default":
                continue
            existing = target.get_experiment_by_name(experiment.name)
            new_experiment = existing.experiment_id if existing else target.create_experiment(
                experiment.name, tags={k: v for k, v in experiment.tags.items() if not k.startswith("mlflow.")}
            )
            summary.experiments += 1
            done = _copied_runs(target, new_experiment)
            # Parents first, so that a child's parent tag can point at the copy.
            runs.sort(key=lambda run: PARENT_TAG in run.data.tags)
            for number, run in enumerate(runs, 1):
                if run.info.run_id in done:
                    ids[run.info.run_id] = done[run.info.run_id]
                    summary.runs_already_there += 1
                    continue
                ids[run.info.run_id], values = _copy_run(source, target, run, new_experiment, ids)
                summary.runs += 1
                summary.metric_values += values
                say(f"{experiment.name}: run {number} of {len(runs)} ({run.info.run_name}) copied")
            models.update(_copy_logged_models(source, target, experiment.experiment_id, new_experiment, ids, summary))
        _copy_registry(source, target, ids, models, summary)
    except MlflowException as err:
        raise StoreCopyError(f"copying {source_uri} into {target_uri} failed: {err.message}") from err
    return summary
