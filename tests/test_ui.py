"""The MLflow UI `make ui` starts shows every stage's run and a run's metrics.

A SQLite store in a temp project gets one finished run per stage (made with
MLflow's client, no training), the UI runs as a subprocess with the command
:func:`catsdogs.ui.ui_command` builds, and headless Chromium renders its pages
(the UI is a React app: only a browser running its JavaScript shows the runs).
Screenshots are kept in ``test-artifacts/`` at the repo root.
"""

from __future__ import annotations

import html.parser
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param

from catsdogs import tracking, ui

from conftest import ROOT, free_port, running_server

pytestmark = pytest.mark.slow

STAGES = ("scratch_cnn", "regularized_cnn", "augmented_cnn", "vgg16_features", "vgg16_augmented", "fine_tune")
START_TIMEOUT_SECONDS = 90
BROWSER_TIMEOUT_SECONDS = 120
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1600,1200",
    # Virtual time runs the app's timers without waiting for them and stops
    # while requests are pending, so the DOM is dumped once the data is shown.
    "--virtual-time-budget=20000",
)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.fail(
            "Chromium is not installed, and the UI test needs a real browser: install it with "
            "`sudo apt-get install -y chromium chromium-driver` (Debian/Ubuntu), then rerun"
        )
    return found


class _VisibleText(html.parser.HTMLParser):
    """Collects the text of a page, leaving out scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        self._hidden += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._hidden -= tag in ("script", "style")

    def handle_data(self, data):
        if not self._hidden and data.strip():
            self.parts.append(data.strip())


def render(url: str, screenshot: Path, profile: Path) -> str:
    """Opens ``url`` in headless Chromium; saves a screenshot and returns the page's visible text."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    partial = screenshot.with_name(f".{screenshot.name}")
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={partial}", "--dump-dom", url]
    browser = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        dom, _ = browser.communicate(timeout=BROWSER_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.wait()
        pytest.fail(f"Chromium did not finish rendering {url} in {BROWSER_TIMEOUT_SECONDS} s")
    assert browser.returncode == 0, f"Chromium failed ({browser.returncode}) on {url}"
    os.replace(partial, screenshot)
    print(f"\nscreenshot of {url}: {screenshot}")
    parser = _VisibleText()
    parser.feed(dom)
    return " ".join(parser.parts)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project store with one finished run per stage, logging per-epoch and summary metrics."""
    root = tmp_path_factory.mktemp("ui-project")
    (root / "dvc.yaml").write_text("stages: {}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        experiment_id = tracking.use_experiment(root)
        client = mlflow.MlflowClient()
        runs = {}
        for i, stage in enumerate(STAGES):
            run = client.create_run(experiment_id, run_name=stage, tags={"dvc.stage": stage})
            now = int(time.time() * 1000)
            best = round(0.70 + 0.04 * i, 2)
            metrics = [Metric("val_accuracy", best - 0.02 * (2 - epoch), now, epoch) for epoch in range(3)]
            metrics.append(Metric("best_val_accuracy", best, now, 0))
            client.log_batch(run.info.run_id, metrics=metrics, params=[Param("train.epochs", "3")])
            client.set_terminated(run.info.run_id)
            runs[stage] = {"run_id": run.info.run_id, "best": best}
    return {"root": root, "experiment_id": experiment_id, "runs": runs}


@pytest.fixture(scope="module")
def ui_server(store, tmp_path_factory):
    """The UI over the store, as `catsdogs ui` starts it; stopped after the tests."""
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: an earlier test's store.
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        command = ui.ui_command(store["root"], port=port)
    env = {**os.environ, **ui.UI_ENVIRONMENT, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    url = f"http://127.0.0.1:{port}"
    with running_server(
        command,
        cwd=store["root"],
        env=env,
        ready_url=f"{url}/health",
        name="mlflow ui",
        log_path=tmp_path_factory.mktemp("ui") / "ui.log",
        timeout=START_TIMEOUT_SECONDS,
    ):
        yield url


def test_ui_command_reads_the_project_store_without_an_artifact_proxy(store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    command = ui.ui_command(store["root"], port=5123)

    def option(name: str) -> str:
        return command[command.index(name) + 1]

    assert command[1:4] == ["-m", "mlflow", "ui"]
    assert option("--backend-store-uri") == f"sqlite:///{store['root']}/mlruns/mlflow.db"
    assert option("--default-artifact-root") == (store["root"] / "mlruns" / "artifacts").as_uri()
    assert option("--host") == "127.0.0.1" and option("--port") == "5123"
    assert "--no-serve-artifacts" in command
    assert ui.UI_ENVIRONMENT == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def test_experiment_page_lists_the_run_of_every_stage(store, ui_server, tmp_path):
    started = time.monotonic()
    text = render(
        ui.experiment_url(ui_server, store["experiment_id"]), ARTIFACTS / "ui-experiment.png", tmp_path / "profile"
    )
    print(f"browser check took {time.monotonic() - started:.1f} s")

    missing = [stage for stage in STAGES if stage not in text]
    assert not missing, f"runs {missing} not shown; the page said: {text[:1500]}"
    assert f"{len(STAGES)} matching runs" in text
    assert "Model training" in text and tracking.EXPERIMENT_NAME in text


def test_run_page_shows_the_runs_metrics(store, ui_server, tmp_path):
    run = store["runs"]["fine_tune"]
    text = render(
        ui.run_url(ui_server, store["experiment_id"], run["run_id"]), ARTIFACTS / "ui-run.png", tmp_path / "profile"
    )

    assert "fine_tune" in text
    assert "Metrics (2)" in text, text[:1500]
    assert f"best_val_accuracy {run['best']}" in text
    assert f"val_accuracy {run['best']}" in text  # the last epoch's value
    assert "train.epochs 3" in text
