"""MLflow tracking shared by the training stages: one run per stage execution.

With :mod:`catsdogs.tracking.parent_runs`, the only module that imports mlflow. A
stage wraps its work in :func:`start_run`, which points MLflow at the
project's store, opens a run named after the stage, as a child of its pipeline
execution's parent run, with tags saying what code, data and machine produced
it, logs the stage's params once, its dataset (``mlflow.log_input``) and,
while it runs, MLflow's system metrics (CPU, memory, GPU where there is one). The handle it yields gives the Keras
callback for per-epoch metrics and logs the summary, the learning curves, the
model summary and the model itself (registered as a new version of
``cats-vs-dogs``, with an alias named after the stage outside experiments)::

    with tracking.start_run("scratch_cnn", params, manifest=manifest) as run:
        history = model.fit(..., callbacks=[run.callback()])
        run.log_history(history_frame)
        run.log_model_summary(model)
        run.log_summary(summary)
        run.log_model(model, example=one_photo)

The store is ``sqlite:///<project root>/mlruns/mlflow.db`` with artifacts in
``<project root>/mlruns/artifacts``, both absolute so that runs made by
``dvc exp run --temp`` or ``--queue`` in a copy of the repo under
``.dvc/tmp/exps/`` land in the project's store. ``MLFLOW_TRACKING_URI``
overrides it, e.g. for a shared tracking server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import sqlite3
import subprocess
import tempfile
import time
import types
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import mlflow.data
import mlflow.data.pandas_dataset
import mlflow.keras
import numpy as np
import pandas as pd
import requests
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.types import Schema, TensorSpec

from catsdogs.core.atomic import sha256_file
from catsdogs.core.errors import CatsDogsError
from catsdogs.core.project import project_root
from catsdogs.tracking import parent_runs
from catsdogs.tracking.curves import plot_learning_curves
from catsdogs.tracking.execution import experiment_name

EXPERIMENT_NAME = "cats-vs-dogs"
REGISTERED_MODEL_NAME = "cats-vs-dogs"
STORE_DIR = "mlruns"
PROBE_TIMEOUT_SECONDS = 5.0
# MLflow keeps a dataset digest in at most 36 characters.
DATASET_DIGEST_CHARS = 32
# Files that change with every experiment without being code: a run whose only
# edits are these still ran the committed code.
# What a run rewrites or an experiment changes, unlike the code: the stages'
# metrics and plots are versioned in Git beside dvc.lock.
NOT_CODE = ("params.yaml", "dvc.lock", "metrics", "plots")


class TrackingError(CatsDogsError):
    """The MLflow tracking store cannot be used."""


def tracking_uri(root: Path) -> str:
    """Returns ``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / STORE_DIR / 'mlflow.db'}"


def check_tracking_server(uri: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Fails fast if the tracking store cannot be reached.

    MLflow's own client retries an unreachable server for minutes; a stage calls
    this before training so that a wrong URI costs seconds, not a lost run.

    Args:
        uri: a tracking URI: ``http(s)://`` servers are asked for ``/health``;
            for ``sqlite:///`` the database's folder must exist.
        timeout: seconds to wait for the server.

    Raises:
        TrackingError: the server does not answer, answers with an error, or
            the SQLite database's folder is missing.
    """
    hint = "unset MLFLOW_TRACKING_URI to use the project's mlruns/ store, or start the server"
    if uri.startswith(("http://", "https://")):
        health = f"{uri.rstrip('/')}/health"
        try:
            response = requests.get(health, timeout=timeout)
        except requests.RequestException as err:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({type(err).__name__}); {hint}"
            ) from err
        if not response.ok:
            raise TrackingError(
                f"MLflow tracking server {uri} answered HTTP {response.status_code} at {health}; {hint}"
            )
    elif uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if not database.parent.is_dir():
            raise TrackingError(f"MLflow tracking store {uri}: folder {database.parent} does not exist; {hint}")
        check_store_schema(database)


def _schema_revision(database: Path) -> str | None:
    """The alembic revision an MLflow SQLite store was last migrated to; None for a new or empty file."""
    if not database.is_file() or database.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return None
        raise TrackingError(f"MLflow store {database} cannot be read ({err}); move it aside to start a new one") from err
    except sqlite3.DatabaseError as err:
        raise TrackingError(
            f"MLflow store {database} is not an SQLite database ({err}); move it aside "
            f"(e.g. `mv {database} {database}.broken`) and a new one is created on the next run"
        ) from err
    return row[0] if row else None


def check_store_schema(database: Path) -> None:
    """Refuses an MLflow SQLite store that this MLflow cannot use.

    MLflow's own message for a store made by a newer MLflow tells the user to
    run ``mlflow db upgrade``, which then fails; this says what is wrong.

    Raises:
        TrackingError: the store's schema is from a newer or an older MLflow.
    """
    import mlflow.store
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    revision = _schema_revision(database)
    if revision is None:
        return
    migrations = ScriptDirectory(str(Path(mlflow.store.__file__).parent / "db_migrations"))
    heads = set(migrations.get_heads())
    if revision in heads:
        return
    try:
        known = migrations.get_revision(revision) is not None
    except CommandError:
        known = False
    if not known:
        raise TrackingError(
            f"MLflow store {database} was written by a newer MLflow than {mlflow.__version__} "
            f"(schema revision {revision} is unknown to it); open it with that newer MLflow, or move it "
            f"aside (`mv {database.parent} {database.parent}.newer`) to start a new store here"
        )
    raise TrackingError(
        f"MLflow store {database} has the schema of an older MLflow (revision {revision}); back it up, then run "
        f"`mlflow db upgrade sqlite:///{database}`"
    )


def git_tags(workdir: Path) -> dict[str, str]:
    """Says which commit the code comes from and whether it was edited since.

    Edits to :data:`NOT_CODE` files and untracked files (outputs) do not count.

    Args:
        workdir: a folder inside the git work tree that runs the code.

    Returns:
        ``git.commit`` and ``git.code_dirty`` (``"true"``/``"false"``), each
        ``"unknown"`` without git, outside a repo or before the first commit.
    """
    excludes = [f":(exclude){name}" for name in NOT_CODE]
    try:
        commit = _git(workdir, "rev-parse", "HEAD")
        changes = _git(workdir, "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes)
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.code_dirty": "unknown"}
    return {"git.commit": commit, "git.code_dirty": str(bool(changes)).lower()}


def _git(workdir: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=workdir, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def runtime_tags() -> dict[str, str]:
    """Returns the Python, TensorFlow and Keras versions, the device and the dtype policy."""
    import tensorflow as tf

    from catsdogs.core.runtime import detect_device

    device, _ = detect_device()
    return {
        "python.version": platform.python_version(),
        "tensorflow.version": tf.__version__,
        "keras.version": keras.__version__,
        "device": device,
        "precision": keras.config.dtype_policy().name,
    }


def run_tags(
    stage: str, manifest: Path | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Collects every tag of a stage's run.

    Args:
        stage: the DVC stage name.
        manifest: the dataset manifest the stage trains on, or None.
        extra: more tags, which win over the collected ones.

    Returns:
        ``dvc.stage``, the git, version and device tags, ``dataset.manifest_sha256``
        when a manifest is given and ``dvc.exp_name`` inside ``dvc exp run``.

    Raises:
        TrackingError: the manifest does not exist.
    """
    tags = {"dvc.stage": stage, **git_tags(Path.cwd()), **runtime_tags()}
    if manifest is not None:
        if not Path(manifest).is_file():
            raise TrackingError(
                f"dataset manifest {manifest} not found; run `dvc repro build_small_dataset` first"
            )
        tags["dataset.manifest_sha256"] = sha256_file(manifest)
    if exp_name := experiment_name():
        tags["dvc.exp_name"] = exp_name
    return {**tags, **(extra or {})}


def point_mlflow_at(uri: str) -> None:
    """``mlflow.set_tracking_uri`` without its side effect on the environment.

    MLflow also exports the URI as ``MLFLOW_TRACKING_URI``; left there, every
    later :func:`tracking_uri` would take it for the user's own override.
    """
    given = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if given is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = given


def use_experiment(root: Path) -> str:
    """Points MLflow at the store and returns the id of the ``cats-vs-dogs`` experiment.

    Args:
        root: the project root (see :func:`project_root`).

    Returns:
        The experiment id, creating the experiment (and ``mlruns/``) if needed.

    Raises:
        TrackingError: the store cannot be reached.
    """
    uri = tracking_uri(root)
    local = not os.environ.get("MLFLOW_TRACKING_URI")
    if local:
        (root / STORE_DIR).mkdir(parents=True, exist_ok=True)
    check_tracking_server(uri)
    point_mlflow_at(uri)
    with sqlite_creation_lock(uri):
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is not None:
            return experiment.experiment_id
        # A server decides where its artifacts go; the local store keeps them beside the database.
        location = (root / STORE_DIR / "artifacts").as_uri() if local else None
        try:
            return client.create_experiment(EXPERIMENT_NAME, artifact_location=location)
        except MlflowException as err:
            # Two processes on one server may race to create it; the loser uses the winner's.
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            return client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id


@contextmanager
def sqlite_creation_lock(uri: str) -> Iterator[None]:
    """Lets one process at a time open an SQLite store for the first time.

    MLflow creates a new store's tables on first use without a lock of its
    own: two stages starting at once on a fresh clone (``dvc queue start -j
    2``) both try, and one fails with "table ... already exists" (measured
    with ``python -m catsdogs.tracking.store_contention``). Other URIs pass through.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    with open(database.with_name(database.name + ".create-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class EpochMetricsLogger(keras.callbacks.Callback):
    """Logs each epoch's metrics and learning rate to an MLflow run, at step = epoch.

    One ``log_batch`` call per epoch keeps the cost per epoch at one store write.
    ``mlflow.keras.MlflowCallback`` (MLflow 3.17) does not replace it: it logs
    to the thread's active fluent run rather than the run id the stage holds,
    leaves out the learning rate (which a schedule changes), and adds
    ``optimizer_*`` params beside the stage's own ``<stage>.optimizer`` and
    ``<stage>.learning_rate``.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.client = mlflow.MlflowClient()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        values = {key: float(value) for key, value in (logs or {}).items() if key != "learning_rate"}
        values["lr"] = current_learning_rate(self.model.optimizer)
        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, value, timestamp, epoch) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """Returns the optimizer's learning rate now, a float or a schedule's current value."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def model_signature(model: keras.Model) -> ModelSignature:
    """Describes the model's tensors: float32, any batch size (-1) first.

    Built from the model's shapes rather than ``mlflow.models.infer_signature``,
    which needs a prediction on an example: the head trained on features has
    no photo to predict on, and the shapes say the same.
    """

    def spec(shape: tuple[int | None, ...]) -> Schema:
        return Schema([TensorSpec(np.dtype("float32"), tuple(-1 if d is None else d for d in shape))])

    return ModelSignature(inputs=spec(model.input_shape), outputs=spec(model.output_shape))


def _save_keras_model(path: str, **kwargs: Any) -> None:
    # mlflow.keras.save_model writes the input example before it creates the
    # model folder, so mlflow.keras.log_model(input_example=...) fails
    # (mlflow/mlflow#16183, still open in MLflow 3.17); creating it first is the fix.
    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)


# mlflow.keras.log_model is Model.log(flavor=mlflow.keras); this is the same
# flavor, by the same name, with the folder fix above.
_KERAS_FLAVOR = types.SimpleNamespace(__name__=mlflow.keras.__name__, save_model=_save_keras_model)


@dataclass(frozen=True)
class TrackedRun:
    """The open run of one stage execution; methods log into it."""

    run_id: str
    stage: str
    parent_run_id: str | None = None

    def callback(self) -> EpochMetricsLogger:
        """Returns the Keras callback logging per-epoch metrics into this run."""
        return EpochMetricsLogger(self.run_id)

    def log_resumed(self, history: list[Mapping[str, float]], from_run: str | None) -> None:
        """Copies the epochs an interrupted attempt completed into this run, at
        their steps, so that the run that finishes holds the whole fit; tags
        the attempt it resumes."""
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), timestamp, step)
            for step, row in enumerate(history)
            for key, value in row.items()
            if key != "learning_rate"
        ]
        client = mlflow.MlflowClient()
        # log_batch takes at most 1,000 metrics a call.
        for start in range(0, len(metrics), 1000):
            client.log_batch(self.run_id, metrics=metrics[start : start + 1000])
        client.set_tag(self.run_id, "resume.from_epoch", str(len(history)))
        if from_run:
            client.set_tag(self.run_id, "resume.from_run", from_run)

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        """Logs the final summary (the stage's metrics JSON) as run metrics, in one call."""
        timestamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), timestamp, 0) for key, value in metrics.items()]
        mlflow.MlflowClient().log_batch(self.run_id, metrics=batch)

    def log_history(self, history: pd.DataFrame) -> None:
        """Logs ``history.csv`` and the ``learning_curves.png`` drawn from it.

        Args:
            history: one row per epoch with the columns ``epoch``, ``loss``,
                ``accuracy``, ``val_loss``, ``val_accuracy``.
        """
        with tempfile.TemporaryDirectory() as tmp:
            history.to_csv(Path(tmp, "history.csv"), index=False)
            plot_learning_curves(history, Path(tmp, "learning_curves.png"), title=self.stage)
            mlflow.MlflowClient().log_artifacts(self.run_id, tmp)

    def log_model_summary(self, model: keras.Model) -> None:
        """Logs ``model.summary(show_trainable=True)`` as ``model_summary.txt``."""
        lines: list[str] = []
        # Wide enough that the Trainable column is not cut to "Trai…".
        model.summary(
            line_length=100, show_trainable=True, print_fn=lambda line, *_, **__: lines.append(line)
        )
        mlflow.MlflowClient().log_text(self.run_id, "\n".join(lines), "model_summary.txt")

    def log_model(self, model: keras.Model, example: np.ndarray) -> str:
        """Logs the model (Keras flavour) and registers it as the stage's version.

        The model becomes a new version of ``cats-vs-dogs``, tagged with its
        stage and, inside ``dvc exp run``, its experiment's name. Outside an
        experiment the alias named after the stage moves to it, and
        ``models:/cats-vs-dogs@<stage>`` loads it; an experiment never moves
        an alias (``python -m catsdogs.evaluation.champion promote --experiment NAME``
        does, by hand).

        Args:
            model: takes raw RGB photos, float32, values 0..255, shape
                (batch, H, W, 3); returns the probability of "dog", shape (batch, 1).
            example: one photo (H, W, 3) or a batch of which the first is kept,
                saved as the model's input example.

        Returns:
            The registered model version.
        """
        import tensorflow as tf

        example = np.asarray(example, dtype=np.float32)
        example = example[None] if example.ndim == 3 else example[:1]
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=_KERAS_FLAVOR,
            model=model,
            signature=model_signature(model),
            input_example=example,
            registered_model_name=REGISTERED_MODEL_NAME,
            # Pinning the requirements skips MLflow's inference, which reloads the
            # model in a subprocess and costs far more than saving it.
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                f"keras=={keras.__version__}",
                f"tensorflow=={tf.__version__}",
            ],
            tags={"dvc.stage": self.stage},
        )
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        client.set_model_version_tag(REGISTERED_MODEL_NAME, version, "dvc.stage", self.stage)
        experiment = experiment_name()
        if experiment is not None:
            client.set_model_version_tag(REGISTERED_MODEL_NAME, version, "dvc.exp_name", experiment)
        else:
            client.set_registered_model_alias(REGISTERED_MODEL_NAME, self.stage, version)
        return version


def process_tags() -> dict[str, str]:
    """Which process runs the run: lets a later stage tell a run whose
    process died (``kill -9``) from one still training."""
    import psutil

    me = psutil.Process()
    return {"process.host": platform.node(), "process.pid": str(me.pid), "process.started": f"{me.create_time():.3f}"}


def _epochs_logged(client: mlflow.MlflowClient, run_id: str) -> int:
    return len(client.get_metric_history(run_id, "loss"))


def end_unfinished_run(run_id: str, err: BaseException) -> None:
    """Ends a run whose stage did not finish: KILLED for a stop signal or
    Ctrl-C, FAILED otherwise, tagged with the reason and the epochs done.

    A second signal meanwhile does not cut this short, and a store that
    cannot be written to only costs a warning: the original error matters more.
    """
    from catsdogs.core.stopping import StageStopped, deferred

    stopped = isinstance(err, (StageStopped, KeyboardInterrupt))
    reason = err.signal_name if isinstance(err, StageStopped) else type(err).__name__
    with deferred(stop_after=False):
        try:
            client = mlflow.MlflowClient()
            client.set_tag(run_id, "stop.reason", reason)
            client.set_tag(run_id, "stop.epochs_completed", str(_epochs_logged(client, run_id)))
            mlflow.end_run("KILLED" if stopped else "FAILED")
        except Exception as store_err:  # noqa: BLE001 - reported, the stage's own error follows
            print(f"warning: could not mark MLflow run {run_id} ended ({store_err})")


def end_vanished_runs(experiment_id: str) -> list[str]:
    """Ends as KILLED the RUNNING runs started on this machine by a process
    that is gone, so no run stays RUNNING for ever after a ``kill -9``.

    Returns:
        The ids of the runs ended.
    """
    import psutil

    client = mlflow.MlflowClient()
    host = platform.node()
    ended = []
    running = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`process.host` = '{host}'"
    )
    for found in running:
        tags = found.data.tags
        try:
            alive = abs(psutil.Process(int(tags["process.pid"])).create_time() - float(tags["process.started"])) < 1
        except psutil.AccessDenied:
            alive = True  # another user's process: cannot tell, so leave it
        except (psutil.NoSuchProcess, KeyError, ValueError):
            alive = False
        if alive:
            continue
        run_id = found.info.run_id
        client.set_tag(run_id, "stop.reason", "process vanished (kill -9 or crash)")
        client.set_tag(run_id, "stop.epochs_completed", str(_epochs_logged(client, run_id)))
        client.set_terminated(run_id, status="KILLED")
        if parent_id := tags.get("mlflow.parentRunId"):
            if client.get_run(parent_id).info.status == "RUNNING":
                parent_runs.close_parent(client, parent_id, run_id)
        ended.append(run_id)
    return ended


@contextmanager
def start_run(
    stage: str,
    params: Mapping[str, Any],
    *,
    manifest: Path | None,
    extra_tags: Mapping[str, str] | None = None,
    root: Path | None = None,
    dataset_context: str = "training",
) -> Iterator[TrackedRun]:
    """Opens the MLflow run of one stage execution, under its pipeline's parent run.

    Args:
        stage: the DVC stage name; also the run name and the model alias.
        params: every value the stage reads, flat (see ``config.flatten``),
            plus the split sizes; logged in one call.
        manifest: the dataset manifest, whose digest is tagged and which is
            logged as the run's dataset input; None for none.
        extra_tags: more tags for the run.
        root: the project root; found from the current directory by default.
        dataset_context: what the run uses the dataset for, shown beside it
            in the UI ("training", "evaluation").

    Yields:
        The run's handle. The run ends FINISHED; KILLED if a stop signal or
        Ctrl-C ends the block, FAILED on any other exception (which
        propagates), either with the epochs it completed (see
        :func:`end_unfinished_run`); the parent run ends with the same
        status. Runs of this machine left RUNNING by a process that no longer
        exists (``kill -9``, a crash) are ended first.

    Raises:
        TrackingError: the store cannot be reached, or the manifest is missing.
    """
    root = Path(root).resolve() if root is not None else project_root()
    experiment_id = use_experiment(root)
    end_vanished_runs(experiment_id)
    tags = run_tags(stage, manifest, extra_tags)
    client = mlflow.MlflowClient()
    params_file = Path("params.yaml").resolve()
    parent_id = parent_runs.open_parent(
        client,
        experiment_id,
        project=root,
        params_file=params_file,
        params_sha256=sha256_file(params_file) if params_file.is_file() else "none",
        shared=tags,
    )
    # Only the stage's own run names its process: the parent outlives it.
    tags.update({**parent_runs.child_tags(parent_id), **process_tags()})
    run_id = None
    try:
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=stage, tags=tags, log_system_metrics=True
        ) as active:
            run_id = active.info.run_id
            try:
                batch = [Param(key, str(value)) for key, value in params.items()]
                client.log_batch(run_id, params=batch)
                if manifest is not None:
                    log_dataset(manifest, dataset_context)
                yield TrackedRun(run_id=run_id, stage=stage, parent_run_id=parent_id)
            except BaseException as err:
                end_unfinished_run(run_id, err)
                raise
    finally:
        if run_id is not None:
            parent_runs.close_parent(client, parent_id, run_id)


def manifest_dataset(manifest: Path, frame: pd.DataFrame) -> mlflow.data.pandas_dataset.PandasDataset:
    """The small dataset as MLflow describes it: the manifest's rows, named by its digest.

    Args:
        manifest: ``manifest.csv``, one row per photo (split, label, filename, sha256, ...).
        frame: its rows.

    Returns:
        A dataset whose digest is the manifest's SHA-256 (its first 32 hex
        digits), so two runs on the same photos show the same dataset.
    """
    with warnings.catch_warnings():
        # MLflow registers the same local source twice (for paths and for
        # file:// URIs) and warns that it picked one; the manifest's integer
        # columns (width, height) have no missing values to warn about.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        return mlflow.data.from_pandas(
            frame,
            source=str(Path(manifest).resolve()),
            name="small-dataset",
            targets="label" if "label" in frame.columns else None,
            digest=sha256_file(manifest)[:DATASET_DIGEST_CHARS],
        )


def photo_counts(frame: pd.DataFrame) -> dict[str, str]:
    """``{"photos": "5000", "photos.train.cat": "1500", ...}``: photos in all, per split and label."""
    counts = {"photos": str(len(frame))}
    if {"split", "label"} <= set(frame.columns):
        for (split, label), n in frame.groupby(["split", "label"]).size().items():
            counts[f"photos.{split}.{label}"] = str(n)
    return counts


def log_dataset(manifest: Path, context: str) -> None:
    """Logs the manifest as the active run's dataset input, tagged with the photos per split."""
    frame = pd.read_csv(manifest)
    mlflow.log_input(manifest_dataset(manifest, frame), context=context, tags=photo_counts(frame))


# The model registry as the evaluate stage and the champion command use it:
# which version holds which stage's model, test metrics added to a finished
# training run, and aliases moved by hand or by evaluate.


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of the ``cats-vs-dogs`` registered model."""

    version: str
    run_id: str | None
    stage: str | None  # the ``dvc.stage`` tag of the run that logged it
    aliases: tuple[str, ...] = ()
    experiment: str | None = None  # the DVC experiment that registered it, None for `dvc repro`


def use_store(root: Path | None = None) -> str:
    """Points MLflow at the project's store without creating anything in it.

    Args:
        root: the project root; found from the current directory by default.

    Returns:
        The tracking URI in use.

    Raises:
        TrackingError: the store cannot be reached or its folder is missing.
    """
    root = Path(root).resolve() if root is not None else project_root()
    uri = tracking_uri(root)
    check_tracking_server(uri)
    point_mlflow_at(uri)
    return uri


def _registered_model(client: mlflow.MlflowClient):
    """The ``cats-vs-dogs`` registered model, or None before anything was registered."""
    try:
        return client.get_registered_model(REGISTERED_MODEL_NAME)
    except MlflowException as err:
        if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise


def registered_aliases(client: mlflow.MlflowClient | None = None) -> dict[str, str]:
    """Returns ``{alias: version}`` of ``cats-vs-dogs``; empty before anything was registered."""
    model = _registered_model(client or mlflow.MlflowClient())
    return {} if model is None else {alias: str(version) for alias, version in model.aliases.items()}


def registered_versions() -> list[RegisteredVersion]:
    """Lists every version of ``cats-vs-dogs`` in the current store, oldest first.

    Returns:
        The versions with their aliases and the stage that logged each; empty
        when nothing was registered yet.
    """
    client = mlflow.MlflowClient()
    model = _registered_model(client)
    if model is None:
        return []
    # Search results carry no aliases on every store; the registered model does.
    aliases: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    found = []
    for mv in client.search_model_versions(f"name = '{REGISTERED_MODEL_NAME}'"):
        stage, experiment = mv.tags.get("dvc.stage"), mv.tags.get("dvc.exp_name")
        if stage is None and mv.run_id:
            run_tags = client.get_run(mv.run_id).data.tags
            stage, experiment = run_tags.get("dvc.stage"), run_tags.get("dvc.exp_name")
        version = str(mv.version)
        found.append(RegisteredVersion(
            version, mv.run_id or None, stage, tuple(sorted(aliases.get(version, ()))), experiment
        ))
    return sorted(found, key=lambda v: int(v.version))


def experiment_parent_tags(experiment: str) -> dict[str, str] | None:
    """The tags of the newest parent run of a DVC experiment; None if it has none."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(EXPERIMENT_NAME)
    return None if found is None else parent_runs.newest_parent_tags(client, found.experiment_id, experiment)


def set_model_alias(alias: str, version: str) -> None:
    """Moves ``alias`` of ``cats-vs-dogs`` to ``version`` (``models:/cats-vs-dogs@<alias>``)."""
    mlflow.MlflowClient().set_registered_model_alias(REGISTERED_MODEL_NAME, alias, str(version))


def run_metrics(run_id: str) -> dict[str, float]:
    """Returns the latest value of every metric of a run."""
    return dict(mlflow.MlflowClient().get_run(run_id).data.metrics)


def log_run_metrics(run_id: str, metrics: Mapping[str, float]) -> None:
    """Adds metrics to an existing run, finished or not, in one call (step 0)."""
    timestamp = int(time.time() * 1000)
    batch = [Metric(key, float(value), timestamp, 0) for key, value in metrics.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=batch)


def set_run_tags(run_id: str, tags: Mapping[str, str]) -> None:
    """Sets tags on an existing run."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_artifacts(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Uploads a file, or a folder's files recursively, as artifacts of a run.

    Args:
        run_id: the run.
        path: a local file or folder.
        artifact_path: the folder inside the run's artifacts; its root by default.
    """
    client = mlflow.MlflowClient()
    if Path(path).is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)
