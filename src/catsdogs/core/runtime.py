"""Which device trains, and in which floating-point precision.

The same code runs on a CPU-only laptop and on a GPU machine: TensorFlow
places work on a GPU when it sees one, and ``base.precision`` picks the Keras
dtype policy. ``auto`` means mixed float16 on a GPU (its tensor cores run
float16 several times faster) and float32 on the CPU, where float16 math is
emulated and slower.

``base.distribution`` picks the ``tf.distribute`` strategy a stage builds its
model under: ``none`` (one device) or ``mirrored``, a copy of the model on
every visible GPU, each step splitting the global batch (``batch_size``)
among them and averaging their gradients. As the global batch and the averaged
gradient are the same as on one device, the learning rate stays as it is;
raise ``batch_size`` with the device count to use them fully, and the
learning rate with it (the linear scaling rule).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from catsdogs.core.config import DISTRIBUTIONS, PRECISIONS


@dataclass(frozen=True)
class Runtime:
    """What a stage computes on."""

    device: str      # e.g. "CPU (2 cores)" or "GPU: NVIDIA A100-SXM4-40GB"
    has_gpu: bool
    precision: str   # the Keras dtype policy in force
    strategy: tf.distribute.Strategy = dataclasses.field(default_factory=tf.distribute.get_strategy)

    def describe(self) -> str:
        replicas = self.strategy.num_replicas_in_sync
        spread = f", mirrored over {replicas} replicas" if is_mirrored(self.strategy) else ""
        return f"device {self.device}, precision {self.precision}{spread}"

    def tags(self) -> dict[str, str]:
        return {"device": self.device, "precision": self.precision}


def detect_device() -> tuple[str, bool]:
    """Names the accelerator TensorFlow will use, or the CPU and its cores."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
        return "GPU: " + ", ".join(names), True
    return f"CPU ({os.cpu_count()} cores)", False


def resolve_precision(precision: str, has_gpu: bool) -> str:
    """The dtype policy ``base.precision`` means on this machine."""
    if precision == "auto":
        return "mixed_float16" if has_gpu else "float32"
    return precision


def make_strategy(distribution: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy ``base.distribution`` names.

    ``none`` is TensorFlow's default strategy, whose scope changes nothing.
    ``mirrored`` spans every visible GPU; without a GPU, every logical CPU
    device, which is one unless the CPU was split with
    ``tf.config.set_logical_device_configuration`` (how the tests train on
    two replicas without a GPU).

    Raises:
        ValueError: ``distribution`` is not one of :data:`DISTRIBUTIONS`.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)} (got {distribution!r})")
    if distribution == "none":
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def is_mirrored(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MirroredStrategy)


def distribution_tags(strategy: tf.distribute.Strategy) -> dict[str, str]:
    """MLflow tags saying how a model was trained: ``distribution`` and ``distribution.replicas``."""
    return {
        "distribution": "mirrored" if is_mirrored(strategy) else "none",
        "distribution.replicas": str(strategy.num_replicas_in_sync),
    }


def configure_runtime(precision: str, distribution: str = "none") -> Runtime:
    """Sets the global Keras dtype policy, picks the strategy and reports the device.

    Call before building models: layers take the policy when they are made,
    and a model must be built and compiled inside ``runtime.strategy.scope()``
    to train under it.

    Args:
        precision: ``base.precision`` of params.yaml, one of :data:`PRECISIONS`.
        distribution: ``base.distribution``, one of :data:`DISTRIBUTIONS`.

    Returns:
        The device, the policy in force and the strategy.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    device, has_gpu = detect_device()
    policy = resolve_precision(precision, has_gpu)
    keras.config.set_dtype_policy(policy)
    runtime = Runtime(device=device, has_gpu=has_gpu, precision=policy, strategy=make_strategy(distribution))
    note = ""
    if policy.startswith("mixed") and not has_gpu:
        note = " (no GPU: float16 math on the CPU is slower than float32)"
    print(f"{runtime.describe()}{note}", flush=True)
    return runtime
