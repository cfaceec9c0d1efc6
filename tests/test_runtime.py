"""Device detection and the precision parameter."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from catsdogs.core.config import ParamsError, parse_params
from catsdogs.core.runtime import configure_runtime, detect_device, resolve_precision
from catsdogs.models import networks


@pytest.fixture(autouse=True)
def _restore_policy():
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()


def test_auto_precision_is_mixed_on_a_gpu_and_float32_on_the_cpu():
    assert resolve_precision("auto", has_gpu=True) == "mixed_float16"
    assert resolve_precision("auto", has_gpu=False) == "float32"
    assert resolve_precision("mixed_bfloat16", has_gpu=False) == "mixed_bfloat16"


def test_configure_runtime_names_the_device_and_sets_the_policy(capsys):
    device, has_gpu = detect_device()
    runtime = configure_runtime("auto")
    assert runtime.device == device and runtime.has_gpu == has_gpu
    assert keras.config.dtype_policy().name == runtime.precision
    if not has_gpu:
        assert runtime.precision == "float32" and device.startswith("CPU (")
    assert f"device {device}" in capsys.readouterr().out
    assert runtime.tags() == {"device": device, "precision": runtime.precision}


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        configure_runtime("float8")
    with pytest.raises(ParamsError, match=r"base\.precision.*'half'"):
        parse_params({"base": {"precision": "half"}})


def test_mixed_precision_trains_and_keeps_a_float32_probability():
    configure_runtime("mixed_float16")
    model = networks.build_scratch_cnn(48)
    networks.compile_model(model, "rmsprop", 1e-3)
    assert next(l for l in model.layers if isinstance(l, keras.layers.Conv2D)).compute_dtype == "float16"
    images = np.random.default_rng(0).uniform(0, 255, (8, 48, 48, 3)).astype("float32")
    labels = np.array([0, 1] * 4, dtype="float32")
    history = model.fit(images, labels, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    p_dog = model.predict(images, verbose=0)
    assert p_dog.dtype == np.float32 and ((p_dog >= 0) & (p_dog <= 1)).all()
