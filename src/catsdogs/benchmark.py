"""``make bench``: how fast the pipeline runs here, against its targets.

Prints every figure and writes them to ``reports/benchmark.json``:

- the wall time and peak memory of each stage of the last ``dvc repro``
  (``metrics/timings/``), their total against 45 minutes and the largest
  peak against 6 GiB;
- photos per second of decoding and resizing, of the augmented input
  pipeline alone, of training steps of scratch_cnn, augmented_cnn and
  fine_tune, and of VGG16 bottleneck extraction;
- VGG16 extraction's floating-point rate as a fraction of this machine's
  dense matrix-multiply rate, both measured here;
- the chapter's way beside ours: loading the small dataset photo by photo
  into NumPy, and one augmented training epoch fed by Keras' legacy
  ``ImageDataGenerator.flow``;
- the time of a ``dvc repro`` with nothing to do.

    python -m catsdogs.benchmark [--params params.yaml] [--data data/small] [--out reports/benchmark.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from catsdogs import models, speed
from catsdogs.augmentation import make_augmentation
from catsdogs.classes import SPLITS
from catsdogs.config import Params, load_params
from catsdogs.errors import CatsDogsError
from catsdogs.inputs import decoded_images, make_dataset
from catsdogs.runtime import configure_runtime
from catsdogs.stage_runner import TIMINGS_DIR

TARGETS = {
    "pipeline_minutes": 45.0,          # at most
    "peak_memory_gib": 6.0,            # below
    "augmented_epoch_speedup": 2.0,    # at least, vs ImageDataGenerator.flow
    "loading_speedup": 3.0,            # at least, vs one-by-one NumPy loading
    "noop_repro_seconds": 3.0,         # below
}
# Stages of the default run, in pipeline order.
STAGES = (
    "download", "build_small_dataset", "scratch_cnn", "regularized_cnn", "augmented_cnn",
    "vgg16_bottleneck", "vgg16_features", "vgg16_augmented", "fine_tune", "evaluate",
)


class BenchmarkError(CatsDogsError):
    """The benchmark lacks an input, e.g. the pipeline has not run yet."""


def stage_timings(timings_dir: Path = TIMINGS_DIR) -> dict[str, dict[str, float]]:
    """Wall seconds and peak MiB of every stage, as the stages recorded them."""
    missing = [stage for stage in STAGES if not (timings_dir / f"{stage}.json").is_file()]
    if missing:
        raise BenchmarkError(
            f"{timings_dir / (missing[0] + '.json')} not found: run the pipeline first (`make run`)"
        )
    return {stage: json.loads((timings_dir / f"{stage}.json").read_text()) for stage in STAGES}


def legacy_generator(params: Params) -> Any:
    """The chapter's ImageDataGenerator with the same augmentation settings."""
    aug = params.augmentation
    # Keras 3 keeps the generator only in its tf.keras compatibility namespace.
    return tf.keras.preprocessing.image.ImageDataGenerator(
        rotation_range=aug.rotation_degrees,
        width_shift_range=aug.width_shift,
        height_shift_range=aug.height_shift,
        shear_range=aug.shear,
        zoom_range=aug.zoom,
        horizontal_flip=aug.horizontal_flip,
        fill_mode=aug.fill_mode,
    )


def augmented_epoch_seconds(data: Any, params: Params, steps: int) -> float:
    """Seconds of one training epoch of augmented_cnn's model fed by ``data``."""
    settings = params.augmented_cnn
    keras.utils.set_random_seed(params.base.seed)
    model = models.build_regularized_cnn(params.base.image_size)
    models.compile_model(model, settings.optimizer, settings.learning_rate)
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # builds the graph, untimed
    return speed.timed(lambda: model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False))


def noop_repro_seconds(repeats: int = 3) -> list[float]:
    """Wall seconds of ``dvc repro`` when every stage is up to date."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(["dvc", "repro"], capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0 or "Running stage" in done.stdout:
            raise BenchmarkError(f"`dvc repro` was not a no-op:\n{done.stdout}{done.stderr}")
    return times


def run_benchmark(params: Params, data_dir: Path, *, timings_dir: Path = TIMINGS_DIR, repro: bool = True) -> dict:
    """Measures everything; prints each figure as it comes."""
    def say(text: str) -> None:
        print(text, flush=True)

    runtime = configure_runtime(params.base.precision)
    size, batch = params.base.image_size, params.augmented_cnn.batch_size
    result: dict[str, Any] = {
        "machine": {"device": runtime.device, "precision": runtime.precision, "cpus": os.cpu_count(),
                    "python": platform.python_version(), "tensorflow": tf.__version__},
        "image_size": size,
        "targets": TARGETS,
    }

    timings = stage_timings(timings_dir)
    total = sum(t["wall_seconds"] for t in timings.values())
    peak = max(t["peak_memory_mib"] for t in timings.values()) / 1024
    result["stages"] = timings
    result["pipeline_minutes"] = round(total / 60, 2)
    result["peak_memory_gib"] = round(peak, 2)
    say("Stages of the last dvc repro (wall time, peak memory):")
    for stage, t in timings.items():
        say(f"  {stage:<20} {t['wall_seconds']:7.0f} s  {t['peak_memory_mib']:6.0f} MiB")
    say(f"  total {total / 60:.1f} min (target <= {TARGETS['pipeline_minutes']:.0f}), "
        f"peak {peak:.2f} GiB (target < {TARGETS['peak_memory_gib']:.0f})")

    rates: dict[str, float] = {}
    # Decoding + resizing: our tf.data loading vs the chapter's photo-by-photo NumPy loading.
    ours = speed.timed(lambda: [list(decoded_images(data_dir / split, size).batch(256)) for split in SPLITS])
    chapter_arrays: dict[str, tuple] = {}

    def load_the_chapters_way() -> None:
        for split in SPLITS:
            chapter_arrays[split] = speed.load_one_by_one(data_dir / split, size)

    chapter = speed.timed(load_the_chapters_way)
    photos = sum(len(images) for images, _ in chapter_arrays.values())
    rates["decode_resize"] = photos / ours
    rates["chapter_numpy_loading"] = photos / chapter
    result["loading_speedup"] = round(chapter / ours, 2)
    say(f"Loading the {photos} photos: {rates['decode_resize']:.0f} photos/s (tf.data) vs "
        f"{rates['chapter_numpy_loading']:.0f} photos/s one by one into NumPy: "
        f"{result['loading_speedup']:.1f}x (target >= {TARGETS['loading_speedup']:.0f}x)")

    augment = make_augmentation(params.augmentation, params.base.seed)
    train = make_dataset(data_dir / "train", image_size=size, batch_size=batch, shuffle=True,
                         seed=params.base.seed, augment=augment, repeat=True)
    rates["augmented_pipeline"] = speed.dataset_rate(train, batches=60)
    say(f"Augmented input pipeline alone: {rates['augmented_pipeline']:.0f} photos/s")

    # One augmented epoch (one pass over the training photos), each way.
    images, labels = chapter_arrays.pop("train")  # the arrays the chapter's way just loaded
    steps = -(-len(images) // batch)
    chapter_arrays.clear()
    legacy = legacy_generator(params).flow(images, labels, batch_size=batch, seed=params.base.seed)
    chapter_epoch = augmented_epoch_seconds(legacy, params, steps)
    our_epoch = augmented_epoch_seconds(train, params, steps)
    result["augmented_epoch_seconds"] = {"ours": round(our_epoch, 1), "chapter": round(chapter_epoch, 1), "steps": steps}
    result["augmented_epoch_speedup"] = round(chapter_epoch / our_epoch, 2)
    rates["augmented_cnn.train"] = steps * batch / our_epoch
    say(f"One augmented epoch ({steps} steps of {batch}): {our_epoch:.0f} s (tf.data) vs {chapter_epoch:.0f} s "
        f"(ImageDataGenerator.flow): {result['augmented_epoch_speedup']:.2f}x "
        f"(target >= {TARGETS['augmented_epoch_speedup']:.0f}x)")
    del images, legacy

    plain = make_dataset(data_dir / "train", image_size=size, batch_size=batch, shuffle=True,
                         seed=params.base.seed, repeat=True)
    scratch = models.compile_model(models.build_scratch_cnn(size), "rmsprop", params.scratch_cnn.learning_rate)
    rates["scratch_cnn.train"] = speed.train_rate(scratch, plain, steps=30, batch_size=batch)
    say(f"Training step, scratch_cnn: {rates['scratch_cnn.train']:.1f} photos/s")
    # The same model on cached photos with no augmentation at all: no input
    # pipeline can make the augmented epoch faster than this.
    bare = models.compile_model(models.build_regularized_cnn(size), "rmsprop", params.augmented_cnn.learning_rate)
    rates["augmented_cnn.train_without_augmentation"] = speed.train_rate(bare, plain, steps=30, batch_size=batch)
    result["augmented_epoch_speedup_ceiling"] = round(
        chapter_epoch / (steps * batch / rates["augmented_cnn.train_without_augmentation"]), 2
    )
    say(f"Training step, augmented_cnn's model without augmentation: "
        f"{rates['augmented_cnn.train_without_augmentation']:.1f} photos/s, so no input pipeline can beat "
        f"the chapter's epoch by more than {result['augmented_epoch_speedup_ceiling']:.2f}x on this machine")
    say(f"Training step, augmented_cnn: {rates['augmented_cnn.train']:.1f} photos/s")
    tuned = speed.vgg16_model(size, trainable_from=params.fine_tune.trainable_from, preprocessing=params.vgg16.preprocessing)
    models.compile_model(tuned, "rmsprop", params.fine_tune.learning_rate)
    rates["fine_tune.train"] = speed.train_rate(tuned, train, steps=8, batch_size=batch)
    say(f"Training step, fine_tune: {rates['fine_tune.train']:.1f} photos/s")

    frozen = speed.vgg16_model(size, trainable_from=None, preprocessing=params.vgg16.preprocessing)
    val = next(iter(make_dataset(data_dir / "validation", image_size=size, batch_size=256, shuffle=False, seed=0)))[0].numpy()
    rates["vgg16_extraction"] = speed.predict_rate(frozen, val, params.vgg16.feature_batch_size)
    flops = speed.conv_flops_per_image(frozen)
    achieved = flops * rates["vgg16_extraction"]
    peak_matmul = speed.matmul_flops_per_second()
    result["vgg16_flops"] = {
        "per_image_gflop": round(flops / 1e9, 2),
        "achieved_gflops": round(achieved / 1e9, 1),
        "matmul_gflops": round(peak_matmul / 1e9, 1),
        "fraction_of_matmul": round(achieved / peak_matmul, 3),
    }
    say(f"VGG16 extraction: {rates['vgg16_extraction']:.1f} photos/s = {achieved / 1e9:.0f} GFLOP/s, "
        f"{achieved / peak_matmul:.0%} of the {peak_matmul / 1e9:.0f} GFLOP/s dense matmul measured here")
    result["images_per_second"] = {k: round(v, 1) for k, v in rates.items()}

    if repro:
        times = noop_repro_seconds()
        result["noop_repro_seconds"] = round(statistics.median(times), 2)
        say(f"dvc repro with nothing to do: {result['noop_repro_seconds']:.2f} s "
            f"(median of {len(times)}; target < {TARGETS['noop_repro_seconds']:.0f} s)")
    result["met"] = targets_met(result)
    return result


def targets_met(result: dict) -> dict[str, bool]:
    """Which targets the measured figures meet (a figure not measured is left out)."""
    checks = {
        "pipeline_minutes": lambda v, t: v <= t,
        "peak_memory_gib": lambda v, t: v < t,
        "augmented_epoch_speedup": lambda v, t: v >= t,
        "loading_speedup": lambda v, t: v >= t,
        "noop_repro_seconds": lambda v, t: v < t,
    }
    return {name: check(result[name], TARGETS[name]) for name, check in checks.items() if name in result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/small"))
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark.json"))
    args = parser.parse_args(argv)
    try:
        result = run_benchmark(load_params(args.params), args.data)
    except CatsDogsError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    missed = [name for name, ok in result["met"].items() if not ok]
    print(f"Wrote {args.out}. Targets missed: {', '.join(missed) if missed else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
