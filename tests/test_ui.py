"""The MLflow UI `make ui` starts shows every stage's run and a run's metrics.

A SQLite store in a temp project gets one finished run per stage (made with
MLflow's client, no training), the UI runs as a subprocess with the command
:func:`catsdogs.serving.ui.ui_command` builds, and headless Chromium renders its pages
(the UI is a React app: only a browser running its JavaScript shows the runs).
Screenshots are kept in ``test-artifacts/`` at the repo root.
"""

from __future__ import annotations

import base64
import contextlib
import html.parser
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param

from catsdogs.tracking import mlflow_runs

from catsdogs.serving import ui
from conftest import ROOT, free_port, running_server, stop_process_group

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


def _onto_fds_3_and_4(reads: int, writes: int) -> None:
    # Chromium's --remote-debugging-pipe reads commands on fd 3 and answers on fd 4.
    reads, writes = os.dup(reads), os.dup(writes)
    os.dup2(reads, 3)
    os.dup2(writes, 4)


class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (the DevTools protocol,
    NUL-terminated JSON messages), for pages that need a click before the screenshot."""

    def __init__(self, profile: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._answers, from_browser = os.pipe()
        flags = [flag for flag in CHROMIUM_FLAGS if not flag.startswith("--virtual-time-budget")]
        self.process = subprocess.Popen(
            [chromium(), *flags, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=lambda: _onto_fds_3_and_4(to_browser, from_browser),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._pending = b""
        self._last_id = 0
        page = next(t for t in self._send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self._send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def _send(self, method: str, session: str | None = None, **params) -> dict:
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._pending:
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    pytest.fail(f"Chromium exited during {method}")
                self._pending += chunk
            raw, self._pending = self._pending.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._last_id:
                if "error" in answer:
                    pytest.fail(f"Chromium refused {method}: {answer['error']}")
                return answer["result"]

    def page(self, method: str, **params) -> dict:
        """Sends a command to the page."""
        return self._send(method, self._session, **params)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        return self.page("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, ready_text: str, height: int = 1200) -> None:
        """Loads ``url`` in a 1600 px wide window and waits until the page's text holds ``ready_text``."""
        self.page("Emulation.setDeviceMetricsOverride", width=1600, height=height, deviceScaleFactor=1, mobile=False)
        self.page("Page.navigate", url=url)
        self.wait_for(ready_text)

    def wait_for(self, text: str) -> str:
        """Waits until the page's visible text holds ``text``; returns that text."""
        deadline = time.monotonic() + BROWSER_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            shown = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if text in shown:
                return shown
            time.sleep(0.5)
        pytest.fail(f"the page never showed {text!r}; it said: {shown[:1500]}")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"]))
        print(f"\nscreenshot: {path}")

    def close(self) -> None:
        stop_process_group(self.process)
        os.close(self._commands)
        os.close(self._answers)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project store with one finished run per stage, logging per-epoch and summary metrics."""
    root = tmp_path_factory.mktemp("ui-project")
    (root / "dvc.yaml").write_text("stages: {}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        experiment_id = mlflow_runs.use_experiment(root)
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


@contextlib.contextmanager
def ui_over(root: Path, log_dir: Path) -> Iterator[str]:
    """Runs the UI over a project's store, as `catsdogs ui` starts it; yields its URL."""
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: an earlier test's store.
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        command = ui.ui_command(root, port=port)
    env = {**os.environ, **ui.UI_ENVIRONMENT, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    url = f"http://127.0.0.1:{port}"
    with running_server(
        command,
        cwd=root,
        env=env,
        ready_url=f"{url}/health",
        name="mlflow ui",
        log_path=log_dir / "ui.log",
        timeout=START_TIMEOUT_SECONDS,
    ):
        yield url


@pytest.fixture(scope="module")
def ui_server(store, tmp_path_factory):
    """The UI over the store; stopped after the tests."""
    with ui_over(store["root"], tmp_path_factory.mktemp("ui")) as url:
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
    assert "Model training" in text and mlflow_runs.EXPERIMENT_NAME in text


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
