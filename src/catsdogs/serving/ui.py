"""The MLflow UI over the project's store: what ``make ui`` (``catsdogs ui``) starts.

With ``MLFLOW_TRACKING_URI`` naming a tracking server (``make server``) there
is nothing to start: the server is the UI, and ``catsdogs ui`` prints its page.

The store is the SQLite database the stages write (see :mod:`catsdogs.tracking.mlflow_runs`),
whose experiment already has an absolute ``file://`` artifact location, so the
UI reads artifacts straight from ``mlruns/artifacts`` and needs no artifact
proxy (``--no-serve-artifacts``); ``--default-artifact-root`` keeps any
experiment created from the UI there too, instead of in ``./mlartifacts``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow

from catsdogs.tracking import mlflow_runs
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# By default the MLflow 3 server also starts seven job-runner processes (for
# GenAI trace jobs this project has none of), which triple its start-up time
# on a laptop and keep the cores busy.
UI_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def store_database(root: Path) -> Path:
    """Returns the project's SQLite tracking database, which must exist.

    Args:
        root: the project root (see :func:`catsdogs.tracking.mlflow_runs.project_root`).

    Raises:
        mlflow_runs.TrackingError: the database does not exist yet, or
            ``MLFLOW_TRACKING_URI`` names a tracking server (which has its own UI).
    """
    uri = mlflow_runs.tracking_uri(root)
    if not uri.startswith("sqlite:///"):
        raise mlflow_runs.TrackingError(
            f"MLFLOW_TRACKING_URI is {uri}: that tracking server serves its own UI, "
            "open it in a browser (or unset MLFLOW_TRACKING_URI to browse the project's mlruns/)"
        )
    database = Path(uri.removeprefix("sqlite:///"))
    if not database.is_file():
        raise mlflow_runs.TrackingError(
            f"no MLflow store at {database}: nothing has been tracked yet; "
            "run `make run` to train the models first"
        )
    return database


def ui_command(root: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """Returns the ``mlflow ui`` command line for the project's store.

    Run it with :data:`UI_ENVIRONMENT` added to the environment.

    Args:
        root: the project root.
        host: the interface to listen on; 127.0.0.1 keeps the UI private.
        port: the port to listen on.

    Returns:
        The command, run with this interpreter's MLflow.

    Raises:
        mlflow_runs.TrackingError: see :func:`store_database`.
    """
    database = store_database(root)
    return [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", f"sqlite:///{database}",
        "--default-artifact-root", (database.parent / "artifacts").as_uri(),
        "--no-serve-artifacts",
        "--host", host,
        "--port", str(port),
        # One worker is plenty for one person's browser, and spares the cores.
        "--workers", "1",
    ]


def experiment_url(base_url: str, experiment_id: str) -> str:
    """Returns the UI page listing an experiment's runs.

    ``workflowType=machine_learning`` switches the UI from its default GenAI
    view (traces) to "Model training" (runs, models, registry); the browser
    remembers the choice.
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def run_url(base_url: str, experiment_id: str, run_id: str) -> str:
    """Returns the UI page of one run: its metrics, params, tags and artifacts."""
    return (
        f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        "?workflowType=machine_learning"
    )


def server_page(uri: str) -> str:
    """Returns the experiment's page on a tracking server (its root before anything was tracked).

    Raises:
        mlflow_runs.TrackingError: the server does not answer.
    """
    mlflow_runs.check_tracking_server(uri)
    experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(mlflow_runs.EXPERIMENT_NAME)
    return experiment_url(uri, experiment.experiment_id) if experiment else uri


def project_experiment_id(root: Path) -> str | None:
    """Returns the id of the ``cats-vs-dogs`` experiment in the project's store, None if absent."""
    uri = f"sqlite:///{store_database(root)}"
    experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(mlflow_runs.EXPERIMENT_NAME)
    return experiment.experiment_id if experiment else None
