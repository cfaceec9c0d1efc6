"""Two queued experiments run at once (``dvc queue start -j 2``) and both
record every epoch, against the PostgreSQL-backed team server and against
the project's SQLite store."""

from __future__ import annotations

import subprocess
import time

import mlflow
import pytest

from catsdogs.tracking.mlflow_runs import EXPERIMENT_NAME

from conftest import command_env, run, stop_process_group

pytestmark = pytest.mark.slow

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
QUEUE_TIMEOUT_SECONDS = 900


def wait_for_queue(repo, names, env) -> str:
    """Polls ``dvc queue status`` until every experiment left the queue (bounded)."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    while True:
        status = run(["dvc", "queue", "status"], repo, **env).stdout
        rows = [line for line in status.splitlines() if any(name in line for name in names)]
        if len(rows) == len(names) and not any(word in line for line in rows for word in ("Queued", "Running")):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_SECONDS} s:\n{status}")
        time.sleep(5)


@pytest.mark.parametrize("store", ["server", "sqlite"])
def test_two_experiments_at_once_log_every_epoch_of_both(store, repo_copy, request, tmp_path):
    env, uri = {}, f"sqlite:///{repo_copy / 'mlruns' / 'mlflow.db'}"
    if store == "server":
        uri = request.getfixturevalue("team_engines").tracking_uri
        env["MLFLOW_TRACKING_URI"] = uri
    epochs = {f"{store}-three": 3, f"{store}-four": 4}
    for name, n in epochs.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"scratch_cnn.epochs={n}", "cnn@scratch_cnn"], repo_copy, **env)
    # The workers `dvc queue start` leaves running hold its output open:
    # it runs in its own session with its output in a file, and the session
    # is ended (workers included) once the queue is done.
    with (tmp_path / "queue.log").open("w") as log:
        starter = subprocess.Popen(
            ["dvc", "queue", "start", "-j", "2"], cwd=repo_copy, env=command_env(**env),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        status = wait_for_queue(repo_copy, list(epochs), env)
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=repo_copy, env=command_env(**env), capture_output=True, timeout=120)
        stop_process_group(starter)
    logs = {name: run(["dvc", "queue", "logs", name], repo_copy, **env).stdout for name in epochs}
    for name in epochs:
        assert "database is locked" not in logs[name], logs[name][-3000:]
        assert [line for line in status.splitlines() if name in line][0].split()[-1] == "Success", f"{status}\n{name}'s log:\n{logs[name][-6000:]}"

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = {}
    for name, n in epochs.items():
        found = client.search_runs([experiment.experiment_id], filter_string=f"tags.`dvc.exp_name` = '{name}' and tags.`dvc.stage` = 'scratch_cnn'")
        assert len(found) == 1, f"{name}: {len(found)} runs"
        runs[name] = found[0]
        assert found[0].info.status == "FINISHED"
        for key in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(found[0].info.run_id, key)]
            assert sorted(steps) == list(range(n)), (name, key, steps)
    first, second = (run_.info for run_ in runs.values())
    # They ran at once: each started before the other ended.
    assert first.start_time < second.end_time and second.start_time < first.end_time, (first, second)
    overlap = (min(first.end_time, second.end_time) - max(first.start_time, second.start_time)) / 1000
    print(f"\n{store}: the two runs overlapped for {overlap:.1f} s")
