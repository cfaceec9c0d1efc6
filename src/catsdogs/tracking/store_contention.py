"""Measures what two processes writing one SQLite MLflow store at once lose.

Two stages of ``dvc queue start -j 2`` log to the same ``mlruns/mlflow.db``.
This starts N writer processes at the same instant, each opening a run and
logging B batches of metrics, then counts what reached the store and how
many calls failed, for each way of configuring the store::

    python -m catsdogs.tracking.store_contention                 # every mode, 2 x 300 batches
    python -m catsdogs.tracking.store_contention --modes project --batches 1000

Modes: ``default`` (MLflow's settings), ``wal`` (write-ahead log), ``project``
(what :func:`catsdogs.tracking.mlflow_runs.use_experiment` sets up: see there). ``fresh``
variants start from no database at all, so the writers also race to create
the tables and the experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METRICS_PER_BATCH = 5


def _worker(uri: str, root: str, batches: int, start_at: float, mode: str) -> dict:
    import mlflow
    from mlflow.entities import Metric

    from catsdogs.tracking import mlflow_runs
    os.environ["MLFLOW_TRACKING_URI"] = uri
    errors: list[str] = []
    logged = 0
    while time.time() < start_at:
        time.sleep(0.001)
    started = time.perf_counter()
    try:
        if mode.startswith("project"):
            experiment_id = mlflow_runs.use_experiment(Path(root))
        else:
            mlflow.set_tracking_uri(uri)
            client = mlflow.MlflowClient()
            experiment = client.get_experiment_by_name(mlflow_runs.EXPERIMENT_NAME)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(mlflow_runs.EXPERIMENT_NAME)
        client = mlflow.MlflowClient()
        run_id = client.create_run(experiment_id).info.run_id
    except Exception as err:  # noqa: BLE001 - what fails is the measurement
        return {"run_id": None, "logged": 0, "errors": [f"setup: {err}"[:200]], "seconds": time.perf_counter() - started}
    for step in range(batches):
        metrics = [Metric(f"m{k}", float(step), int(time.time() * 1000), step) for k in range(METRICS_PER_BATCH)]
        try:
            client.log_batch(run_id, metrics=metrics)
            logged += len(metrics)
        except Exception as err:  # noqa: BLE001
            errors.append(str(err)[:200])
    client.set_terminated(run_id)
    return {"run_id": run_id, "logged": logged, "errors": errors, "seconds": time.perf_counter() - started}


def _count(uri: str, run_ids: list[str]) -> int:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    return sum(
        len(client.get_metric_history(run_id, f"m{k}")) for run_id in run_ids if run_id for k in range(METRICS_PER_BATCH)
    )


def measure(mode: str, writers: int, batches: int, folder: Path) -> dict:
    """Runs ``writers`` processes against a new store in ``folder``.

    Returns:
        ``{"mode", "expected", "stored", "failed_calls", "locked_errors",
        "seconds", "first_error"}``.
    """
    root = folder / mode
    (root / "mlruns").mkdir(parents=True)
    database = root / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{database}"
    base = mode.removesuffix("-fresh")
    if not mode.endswith("-fresh"):
        # An existing store, as after the first stage of a run.
        subprocess.run([sys.executable, "-m", "catsdogs.tracking.store_contention", "_create", uri, str(root), base], check=True)
    start_at = time.time() + 8.0  # after every writer has imported MLflow
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "catsdogs.tracking.store_contention", "_worker", uri, str(root), str(batches), str(start_at), base],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(writers)
    ]
    results = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    errors = [e for r in results for e in r["errors"]]
    return {
        "mode": mode,
        "expected": writers * batches * METRICS_PER_BATCH,
        "stored": _count(uri, [r["run_id"] for r in results]),
        "failed_calls": len(errors),
        "locked_errors": sum("database is locked" in e for e in errors),
        "seconds": round(max(r["seconds"] for r in results), 2),
        "first_error": errors[0] if errors else None,
    }


def _create(uri: str, root: str, mode: str) -> None:
    import mlflow

    from catsdogs.tracking import mlflow_runs
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if mode == "project":
        mlflow_runs.use_experiment(Path(root))
        return
    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient().create_experiment(mlflow_runs.EXPERIMENT_NAME)
    if mode == "wal":
        import sqlite3

        with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
            db.execute("PRAGMA journal_mode=WAL")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        uri, root, batches, start_at, mode = argv[1:]
        print(json.dumps(_worker(uri, root, int(batches), float(start_at), mode)))
        return 0
    if argv and argv[0] == "_create":
        _create(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--modes", nargs="+", default=["default", "wal", "project", "default-fresh", "project-fresh"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            row = measure(mode, args.writers, args.batches, Path(tmp))
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
