"""Which device trains, and in which floating-point precision.

The same code runs on a CPU-only laptop and on a GPU machine: TensorFlow
places work on a GPU when it sees one, and ``base.precision`` picks the Keras
dtype policy. ``auto`` means mixed float16 on a GPU (its tensor cores run
float16 several times faster) and float32 on the CPU, where float16 math is
emulated and slower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from catsdogs.config import PRECISIONS


@dataclass(frozen=True)
class Runtime:
    """What a stage computes on."""

    device: str      # e.g. "CPU (2 cores)" or "GPU: NVIDIA A100-SXM4-40GB"
    has_gpu: bool
    precision: str   # the Keras dtype policy in force

    def describe(self) -> str:
        return f"device {self.device}, precision {self.precision}"

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


def configure_runtime(precision: str) -> Runtime:
    """Sets the global Keras dtype policy and reports the device.

    Call before building models: layers take the policy when they are made.

    Args:
        precision: ``base.precision`` of params.yaml, one of :data:`PRECISIONS`.

    Returns:
        The device and the policy in force.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    device, has_gpu = detect_device()
    policy = resolve_precision(precision, has_gpu)
    keras.config.set_dtype_policy(policy)
    runtime = Runtime(device=device, has_gpu=has_gpu, precision=policy)
    note = ""
    if policy.startswith("mixed") and not has_gpu:
        note = " (no GPU: float16 math on the CPU is slower than float32)"
    print(f"{runtime.describe()}{note}", flush=True)
    return runtime
