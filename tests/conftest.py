"""Shared fixtures: tiny photo folders, a sample of the real mirror, a
throw-away copy of the repository for running DVC end to end, a server
subprocess on a free 127.0.0.1 port, and the team's engines (PostgreSQL,
the MLflow server, SeaweedFS's S3) started for real."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from catsdogs.tracking.team_server import Postgres, free_port, s3_store_command

ROOT = Path(__file__).resolve().parents[1]
MIRROR = ROOT.parent / "shared" / "datasets" / "dogs-vs-cats" / "train.zip"


# What a `make run` leaves in the project: the tests must never write there.
PIPELINE_OUTPUTS = ("data", "models", "metrics", "plots", "reports", "mlruns", "dvc.lock")


def output_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """``{path: (size, mtime_ns)}`` of every file among the pipeline's outputs in ``root``."""
    snapshot = {}
    for name in PIPELINE_OUTPUTS:
        top = root / name
        for path in [top] if top.is_file() else top.rglob("*"):
            if path.is_file():
                stat = path.stat()
                snapshot[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


@pytest.fixture(scope="session", autouse=True)
def project_outputs_untouched() -> Iterator[None]:
    """Fails the session if a test wrote into the project's own outputs,
    e.g. a stage script run from the project folder recording its timing."""
    before = output_snapshot(ROOT)
    yield
    after = output_snapshot(ROOT)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    assert not changed, f"tests changed the project's pipeline outputs: {changed[:10]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs the checks of the committed run record last: a lock made stale by a
    code change (until the next real run is committed) must not stop
    ``pytest -x`` before every other test had its say."""
    items.sort(key=lambda item: item.get_closest_marker("run_record") is not None)


def synthetic_photo(label: str, index: int, size: int = 48) -> Image.Image:
    """A photo a tiny CNN can tell apart: cats are warm, dogs are cool, plus noise."""
    rng = np.random.default_rng(index * 2 + (label == "dog"))
    base = np.array([200, 120, 60] if label == "cat" else [60, 120, 200], dtype=np.float32)
    pixels = base + rng.normal(0, 30, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_split_folders(root: Path, per_split: dict[str, int], size: int = 48) -> Path:
    """Writes ``root/<split>/<label>/<label>.<n>.jpg`` and a minimal manifest.csv."""
    rows = ["split,label,filename,sha256,width,height"]
    index = 0
    for split, count in per_split.items():
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                index += 1
                name = f"{label}.{index}.jpg"
                synthetic_photo(label, index, size).save(folder / name, quality=90)
                rows.append(f"{split},{label},{name},{index:064x},{size},{size}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """A data/small look-alike: 12 / 6 / 6 synthetic photos per class."""
    return write_split_folders(tmp_path / "small", {"train": 12, "validation": 6, "test": 6})


def require_mirror() -> Path:
    if not MIRROR.is_file():
        pytest.fail(f"the data mirror {MIRROR} is missing: these tests need ../shared beside the repo")
    return MIRROR


@pytest.fixture(scope="session")
def mirror_sample_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-layout zip holding the first 40 real cats and 40 real dogs of the mirror."""
    mirror = require_mirror()
    out = tmp_path_factory.mktemp("mirror") / "train-sample.zip"
    with zipfile.ZipFile(mirror) as src, zipfile.ZipFile(out, "w") as dst:
        for label in ("cat", "dog"):
            for n in range(1, 41):
                name = f"train/{label}.{n}.jpg"
                dst.writestr(name, src.read(name))
    return out


def real_photos(n_per_class: int) -> list[tuple[str, bytes]]:
    """``(label, jpeg bytes)`` of the first real photos of each class in the mirror."""
    with zipfile.ZipFile(require_mirror()) as archive:
        return [
            (label, archive.read(f"train/{label}.{n}.jpg"))
            for label in ("cat", "dog")
            for n in range(1, n_per_class + 1)
        ]


# The results of record a clone carries in Git, which a copy for tiny-data
# runs leaves out: dvc.lock describes the full-size run, whose cache a copy
# does not have (``dvc exp run`` there would fail restoring its outputs), and
# the full run's metrics and plots must not stand in for the copy's own.
RUN_RECORD = ("dvc.lock", "metrics/", "plots/")


def code_files(root: Path) -> list[str]:
    """The files a fresh clone of ``root`` has, plus uncommitted new ones,
    without the run's record (:data:`RUN_RECORD`)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout
    return [
        line for line in out.splitlines()
        if line and not any(line == r or (r.endswith("/") and line.startswith(r)) for r in RUN_RECORD)
        and (root / line).is_file()
    ]


GIT_ENV = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def command_env(**env: str) -> dict[str, str]:
    """The environment :func:`run` gives a command: the test interpreter's bin
    folder first on PATH, and no tracking store unless ``env`` names one."""
    full_env = {
        **os.environ, **GIT_ENV, **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "DVC_NO_ANALYTICS": "1",
    }
    if "MLFLOW_TRACKING_URI" not in env:
        full_env.pop("MLFLOW_TRACKING_URI", None)
    return full_env


def run(cmd: list[str], cwd: Path, *, log: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Runs a command in :func:`command_env` and fails with its output if it fails.

    Its output is captured, or written to ``log`` when given: a command that
    leaves processes behind holding its output (``dvc queue start``) would
    keep a capturing pipe open until they exit.
    """
    if log is None:
        done = subprocess.run(cmd, cwd=cwd, env=command_env(**env), capture_output=True, text=True, timeout=900)
    else:
        with log.open("w") as out:
            done = subprocess.run(cmd, cwd=cwd, env=command_env(**env), stdout=out, stderr=subprocess.STDOUT, timeout=900)
        done.stdout, done.stderr = log.read_text(), ""
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


TINY_PARAMS = {
    "base": {"seed": 7, "image_size": 48},
    "build_small_dataset": {"train_per_class": 16, "validation_per_class": 8, "test_per_class": 8, "min_side": 32},
    **{
        stage: {"epochs": 2, "batch_size": 8, "optimizer": "rmsprop", "learning_rate": 0.001, "steps_per_epoch": None}
        for stage in ("scratch_cnn", "regularized_cnn")
    },
    "augmented_cnn": {"epochs": 2, "batch_size": 8, "optimizer": "rmsprop", "learning_rate": 0.0001, "steps_per_epoch": 3},
    "vgg16": {"weights_file": None, "preprocessing": "imagenet", "feature_batch_size": 8},
    "vgg16_features": {"epochs": 2, "batch_size": 8, "optimizer": "rmsprop", "learning_rate": 0.0001, "steps_per_epoch": None},
    "vgg16_augmented": {"epochs": 2, "batch_size": 8, "optimizer": "rmsprop", "learning_rate": 0.00002, "steps_per_epoch": 2},
    "fine_tune": {
        "epochs": 2, "batch_size": 8, "optimizer": "rmsprop", "learning_rate": 0.00001, "steps_per_epoch": 2,
        "trainable_from": "block4_conv1", "initial_head": "vgg16_augmented",
    },
}


@pytest.fixture
def repo_copy(tmp_path: Path, mirror_sample_zip: Path) -> Path:
    """A committed copy of this repository whose params read a small sample of
    the real mirror and train tiny models for a couple of epochs."""
    return make_repo_copy(tmp_path / "repo", mirror_sample_zip)


def make_repo_copy(copy: Path, mirror_zip: Path, mirror_location: str | None = None) -> Path:
    """Writes the :func:`repo_copy` repository at ``copy``.

    Args:
        copy: the new repository's folder.
        mirror_zip: the photo archive its download stage reads.
        mirror_location: how params.yaml names it; ``mirror_zip`` (absolute) by default.

    Returns:
        ``copy``, with one commit.
    """
    for rel in code_files(ROOT):
        dest = copy / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["download"]["sources"] = [{"location": mirror_location or str(mirror_zip), "sha256": None}]
    for section, values in TINY_PARAMS.items():
        params.setdefault(section, {}).update(values)
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], copy)
    run(["git", "add", "-A"], copy)
    run(["git", "commit", "-qm", "copy for a test"], copy)
    return copy


def jpeg_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save_args)
    return buffer.getvalue()


def stop_process_group(process: subprocess.Popen) -> None:
    """Ends a process started in its own session and every child it started (e.g. uvicorn workers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def running_server(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    ready_url: str,
    name: str,
    log_path: Path,
    timeout: float,
) -> Iterator[float]:
    """Runs a server subprocess until the ``with`` block ends.

    The server runs in its own session (so stopping it also stops its
    workers), with stdout and stderr in ``log_path``; the test fails with the
    log's tail if it exits or ``ready_url`` does not answer OK in time.

    Args:
        command: The server's command line.
        cwd: The folder it runs in.
        env: Its whole environment.
        ready_url: A URL that answers OK once the server is ready, e.g. ``.../ping``.
        name: What messages call the server, e.g. ``"mlflow ui"``.
        log_path: Where its output goes.
        timeout: Seconds to wait for ``ready_url``.

    Returns:
        A context manager yielding the seconds the server took to answer.
    """
    ready_path = urlsplit(ready_url).path
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() - started > timeout:
                pytest.fail(f"{name} did not answer {ready_path} in {timeout} s:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(ready_url, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass  # not listening yet
            time.sleep(0.25)
        seconds = time.monotonic() - started
        print(f"\n{name} answered {ready_path} after {seconds:.1f} s")
        yield seconds
    finally:
        stop_process_group(process)


@dataclass(frozen=True)
class TeamEngines:
    """PostgreSQL, the MLflow server on it (``make server``) and an S3 store, all running."""

    tracking_uri: str  # the MLflow server
    s3_endpoint: str
    bucket: str  # MLflow's artifacts go under s3://<bucket>/mlflow/
    credentials: dict[str, str]  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY of the S3 store
    postgres: Postgres
    start_seconds: dict[str, float]

    def s3(self):
        """A boto3 S3 client of the store."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="session")
def team_engines() -> Iterator[TeamEngines]:
    """Starts ``weed mini``, then ``make server`` (PostgreSQL, then MLflow
    with its artifacts in the S3 store), each on free 127.0.0.1 ports, waits
    for them (bounded), and stops them by their own process ids."""
    # PostgreSQL runs as the postgres user, which cannot enter pytest's private tmp folders.
    base = Path(tempfile.mkdtemp(prefix="catsdogs-engines-"))
    base.chmod(0o755)
    credentials = {"AWS_ACCESS_KEY_ID": "catsdogs-test", "AWS_SECRET_ACCESS_KEY": "catsdogs-test-secret"}
    env = {**os.environ, **credentials, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    s3_port, pg_port, server_port = free_port(), free_port(), free_port()
    s3_endpoint = f"http://127.0.0.1:{s3_port}"
    postgres = Postgres(base / "postgres", pg_port)
    seconds: dict[str, float] = {}
    try:
        with contextlib.ExitStack() as stack:
            (base / "s3").mkdir()
            seconds["weed mini"] = stack.enter_context(running_server(
                s3_store_command(base / "s3", s3_port, bucket="catsdogs"), cwd=base, env=env, ready_url=f"{s3_endpoint}/healthz",
                name="weed mini", log_path=base / "weed.log", timeout=90,
            ))
            engines = TeamEngines(
                tracking_uri=f"http://127.0.0.1:{server_port}", s3_endpoint=s3_endpoint, bucket="catsdogs",
                credentials=credentials, postgres=postgres, start_seconds=seconds,
            )
            stack.callback(postgres.stop)
            server = [
                "make", "-C", str(ROOT), "--no-print-directory", "server", f"PGDATA={postgres.data_dir}",
                f"PG_PORT={pg_port}", f"SERVER_PORT={server_port}", f"ARTIFACTS=s3://{engines.bucket}/mlflow",
            ]
            seconds["make server"] = stack.enter_context(running_server(
                server, cwd=ROOT, env={**env, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint},
                ready_url=f"{engines.tracking_uri}/health", name="make server", log_path=base / "server.log",
                timeout=240,
            ))
            yield engines
    finally:
        shutil.rmtree(base, ignore_errors=True)
