"""`mlflow models serve` answers the registered champion's predictions (docs/serving.md).

A 32x32 classifier is registered as @champion in a SQLite store in a temp
project; the server runs as a subprocess on a free 127.0.0.1 port and the
request body comes from `python -m catsdogs.serving.cli request`, as documented.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from catsdogs.serving import predict
from conftest import free_port, real_photos, running_server, synthetic_photo
from test_predict import SIZE, STAGE, new_project, register_classifier, warm_cool_classifier

pytestmark = pytest.mark.slow  # starts a model server: about 40 s

START_TIMEOUT_SECONDS = 90


def child_env(**extra: str) -> dict[str, str]:
    """This environment, quiet, with this interpreter's scripts (uvicorn) first on PATH."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store, unless `extra` says otherwise
    return {**env, **extra}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with the classifier registered as @scratch_cnn and @champion, and photos."""
    root = new_project(tmp_path_factory.mktemp("served"))
    model = warm_cool_classifier()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        register_classifier(root, STAGE, model, champion=True)
    photos = []
    for label, data in real_photos(1):
        photos.append(root / f"real-{label}.jpg")
        photos[-1].write_bytes(data)
    photos.append(root / "synthetic-dog.png")
    synthetic_photo("dog", 3, size=64).save(photos[-1])
    return {"root": root, "model": model, "photos": photos}


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """`mlflow models serve` of @champion; yields its URL and start-up seconds, then stops it."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", "models:/cats-vs-dogs@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with running_server(
        command,
        cwd=project["root"],
        env=child_env(MLFLOW_TRACKING_URI=f"sqlite:///{project['root']}/mlruns/mlflow.db"),
        ready_url=f"{url}/ping",
        name="mlflow models serve",
        log_path=tmp_path_factory.mktemp("serve") / "serve.log",
        timeout=START_TIMEOUT_SECONDS,
    ) as seconds:
        yield {"url": url, "start_seconds": seconds}


def request_json(project: dict, *photos: Path) -> str:
    """The documented recipe: `python -m catsdogs.serving.cli request PHOTO... > request.json`."""
    done = subprocess.run(
        [sys.executable, "-m", "catsdogs.serving.cli", "request", *map(str, photos)],
        cwd=project["root"], env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_served_champion_answers_like_the_keras_model(project, server):
    body = request_json(project, *project["photos"])

    answer = requests.post(
        f"{server['url']}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=60
    )

    assert answer.status_code == 200, answer.text
    served = np.array(answer.json()["predictions"], dtype=np.float32)
    pixels = np.array(json.loads(body)["inputs"], dtype=np.float32)
    assert pixels.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_allclose(served, project["model"].predict(pixels, verbose=0), rtol=1e-6)
    # ... and like `catsdogs predict`, which decodes the photos the same way.
    loaded = predict.LoadedModel(project["model"], "test", (SIZE, SIZE))
    cli_p_dog = [r.p_dog for r in predict.predict_files(loaded, project["photos"])]
    np.testing.assert_allclose(served[:, 0], cli_p_dog, rtol=1e-6)
    assert served[2, 0] > 0.5  # the synthetic dog


def test_a_body_at_the_wrong_size_is_refused_with_the_expected_shape(project, server):
    body = {"inputs": np.zeros((1, SIZE + 1, SIZE + 1, 3), dtype=np.uint8).tolist()}

    answer = requests.post(f"{server['url']}/invocations", json=body, timeout=60)

    assert answer.status_code == 400
    assert "32, 32, 3" in answer.text

