"""base.distribution: a model stage trained under MirroredStrategy on two
devices ends where the same stage on one device ends.

There is no GPU here, so a subprocess splits the CPU into two logical
devices before TensorFlow starts (the split cannot be undone in-process);
``mirrored`` then spans both, as it would span two GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest

from catsdogs.core.config import ParamsError, parse_params
from catsdogs.core.runtime import distribution_tags, make_strategy
from catsdogs.tracking.team_server import free_port

# float32 sums reduced in another order differ in the last bits; after a
# few steps of RMSprop that is far below this, and a real difference (a
# replica seeing the wrong half batch, gradients summed instead of averaged)
# moves weights by 1e-3 or more.
WEIGHT_TOLERANCE = 1e-5

TRAIN_ON_DEVICES = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import tensorflow as tf

    devices = int(sys.argv[1])
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)

    import keras
    import numpy as np

    from catsdogs.training.cnn_stages import train_cnn
    from catsdogs.core.config import parse_params
    from catsdogs.training.model_stage import StageOutputs

    params = parse_params(json.loads(sys.argv[2]))
    out = Path(sys.argv[3])
    outputs = StageOutputs(model=out / "model.keras", metrics=out / "metrics.json", plots_dir=out / "plots")
    train_cnn("scratch_cnn", params, data_dir=Path(sys.argv[4]), outputs=outputs)
    model = keras.saving.load_model(outputs.model, compile=False)
    np.savez(out / "weights.npz", *model.get_weights())
    """
)


def train_scratch_cnn(tmp: Path, data: Path, distribution: str, devices: int) -> tuple[list[np.ndarray], Path]:
    """Runs the scratch_cnn stage in a fresh interpreter with ``devices`` logical CPUs."""
    out = tmp / f"{distribution}-{devices}"
    out.mkdir()
    raw = {
        "base": {"seed": 3, "image_size": 32, "distribution": distribution, "precision": "float32"},
        "scratch_cnn": {"epochs": 2, "batch_size": 8, "optimizer": "rmsprop", "learning_rate": 0.001},
    }
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", MLFLOW_DISABLE_TELEMETRY="true")
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_ON_DEVICES, str(devices), json.dumps(raw), str(out), str(data)],
        cwd=out, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with np.load(out / "weights.npz") as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))], out


@pytest.mark.slow
def test_mirrored_on_two_devices_reaches_the_weights_of_one_device(tmp_path, small_dataset):
    # The reference is MirroredStrategy on one device, not `none`: under any
    # strategy Keras draws one batch to build the model before the first
    # epoch, which moves every epoch's shuffle one permutation on (see
    # docs/team-setup.md), so `none` sees other (equally random) orders.
    one, one_dir = train_scratch_cnn(tmp_path, small_dataset, "mirrored", 1)
    two, two_dir = train_scratch_cnn(tmp_path, small_dataset, "mirrored", 2)

    assert [w.shape for w in one] == [w.shape for w in two]
    gap = max(float(np.abs(a - b).max()) for a, b in zip(one, two))
    print(f"\nlargest weight difference, 1 device vs 2 mirrored replicas: {gap:.2e}")
    assert gap < WEIGHT_TOLERANCE
    for summary in ("final_val_loss", "final_val_accuracy"):
        first = json.loads((one_dir / "metrics.json").read_text())[summary]
        second = json.loads((two_dir / "metrics.json").read_text())[summary]
        assert first == pytest.approx(second, abs=1e-4), summary
    # It trained (the loss moved), so matching weights are not two untouched initialisations.
    losses = [float(line.split(",")[1]) for line in (two_dir / "plots" / "history.csv").read_text().splitlines()[1:]]
    assert len(losses) == 2 and abs(losses[0] - losses[1]) > 1e-3

    for out, replicas in ((one_dir, "1"), (two_dir, "2")):
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
        experiment_id = client.get_experiment_by_name("cats-vs-dogs").experiment_id
        [run] = client.search_runs([experiment_id], filter_string="tags.`dvc.stage` = 'scratch_cnn'")
        assert run.data.params["base.distribution"] == "mirrored"
        assert run.data.tags["distribution"] == "mirrored"
        assert run.data.tags["distribution.replicas"] == replicas


def test_distribution_is_validated_and_none_is_the_default():
    assert parse_params({}).base.distribution == "none"
    assert parse_params({"base": {"distribution": "mirrored"}}).base.distribution == "mirrored"
    with pytest.raises(ParamsError, match=r"base\.distribution.*'multi'.*none, mirrored"):
        parse_params({"base": {"distribution": "multi"}})
    with pytest.raises(ValueError, match="distribution"):
        make_strategy("multi")


def test_the_default_strategy_is_one_replica():
    assert distribution_tags(make_strategy("none")) == {"distribution": "none", "distribution.replicas": "1"}



MULTI_WORKER = textwrap.dedent(
    """
    import keras, numpy as np, tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("float32")
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0)
    print("trained", model.get_weights()[1].tolist(), flush=True)
    """
)
KERAS_MULTI_WORKER_ERROR = "Attempt to convert a value (PerReplica"


@pytest.mark.slow
def test_multi_worker_training_fails_in_keras_3_as_the_docs_say():
    """Two workers on 127.0.0.1 (TF_CONFIG) under MultiWorkerMirroredStrategy.

    Keras 3's fit cannot take the per-replica batch the strategy hands it
    (keras-team/keras#20585): docs/team-setup.md says so and claims no
    multi-machine training. The day this test fails because the workers
    trained, Keras fixed it: compare their weights and update the docs.
    """
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", MULTI_WORKER], env={**env, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "3"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (out, err) in zip(processes, outputs):
        assert "trained" not in out, "multi-worker training works now: compare the workers' weights, update the docs"
        assert process.returncode != 0 and KERAS_MULTI_WORKER_ERROR in err, err[-3000:]
