"""``make bench``: how fast the pipeline runs here, against its targets.

Prints every figure and writes them to ``reports/benchmark.json``. Every
measured figure is the median of three rounds, given with its range; two
things compared (ours against the chapter's way, with against without
augmentation) are measured in turn within each round, so a neighbour
slowing the machine down slows both:

- the wall time and peak memory of each stage of the last ``dvc repro``
  (``metrics/timings/``, one run), their total against 45 minutes and the
  largest peak against 6 GiB;
- loading the small dataset: ``tf.data`` against the chapter's photo by
  photo into NumPy (target: 3x);
- the augmented input pipeline alone, composed in one resampling and as
  the five Keras layers;
- training steps of scratch_cnn, of augmented_cnn's model with and without
  augmentation (target: with at 90 % of without) and of fine_tune;
- one augmented epoch fed by ``tf.data`` against Keras' legacy
  ``ImageDataGenerator.flow`` (target: 1.5x, or 90 % of the ceiling that the
  unaugmented step sets when that is lower);
- VGG16 extraction's floating-point rate as a fraction of this machine's
  dense matrix-multiply rate, both measured in the same round (target: 70 %);
- a ``dvc repro`` with nothing to do (target: under 2 s) and where its
  time goes: DVC's start-up, reading dvc.yaml and dvc.lock, and checking
  each stage.

The machine's CPU model and instruction sets are recorded with the figures.

    python -m catsdogs.speed.benchmark [--params params.yaml] [--data data/small] [--out reports/benchmark.json]
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
from typing import Any, Callable

import keras
import tensorflow as tf

from catsdogs.core.atomic import write_json_atomically
from catsdogs.models import networks

from catsdogs.core.classes import SPLITS
from catsdogs.core.config import Params, load_params
from catsdogs.core.errors import CatsDogsError
from catsdogs.core.runtime import configure_runtime
from catsdogs.core.stage_runner import TIMINGS_DIR
from catsdogs.core.study import FROM_SCRATCH, TRANSFER
from catsdogs.data.augmentation import layered_augmentation, make_augmentation
from catsdogs.data.inputs import decoded_images, make_dataset
from catsdogs.speed import throughput

TARGETS = {
    "pipeline_minutes": 45.0,               # at most
    "peak_memory_gib": 6.0,                 # below
    "loading_speedup": 3.0,                 # at least, vs one-by-one NumPy loading
    "augmentation_step_ratio": 0.9,         # at least: augmented step / the same step without augmentation
    "augmented_epoch_speedup": 1.5,         # at least, vs ImageDataGenerator.flow (or 90 % of the ceiling)
    "vgg16_fraction_of_matmul": 0.7,        # at least
    "noop_repro_seconds": 2.0,              # below
}
ROUNDS = 3
# Instruction sets that decide how fast TensorFlow's CPU kernels run.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
# Stages of the default run, in pipeline order.
STAGES = ("download", "build_small_dataset", *FROM_SCRATCH, "vgg16_bottleneck", *TRANSFER, "evaluate")


def spread(values: list[float], digits: int = 2) -> dict[str, Any]:
    """The median of repeated measurements, their range and the values themselves."""
    return {
        "median": round(statistics.median(values), digits),
        "range": [round(min(values), digits), round(max(values), digits)],
        "runs": [round(v, digits) for v in values],
    }


def shown(figure: dict[str, Any], unit: str = "", digits: int = 1) -> str:
    """``median unit (low-high)`` of a :func:`spread`."""
    low, high = figure["range"]
    return f"{figure['median']:,.{digits}f}{unit} ({low:,.{digits}f}-{high:,.{digits}f})"


def interleaved(work: dict[str, Callable[[], float]], rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Runs every measurement once per round, in turn, ``rounds`` times."""
    results: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(rounds):
        for name, measure in work.items():
            results[name].append(measure())
    return results


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and which vector instruction sets it has (Linux's /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {
        "model": model,
        "vector_instruction_sets": [flag for flag in VECTOR_FLAGS if flag in flags],
        "flags": sorted(flags),
    }


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


def augmented_epoch_seconds(data: Any, params: Params, steps: int) -> Callable[[], float]:
    """A measurement: seconds of one training epoch of augmented_cnn's model fed by ``data``.

    The model is built and its graph traced once, untimed; each call then
    times one more epoch.
    """
    settings = params.augmented_cnn
    keras.utils.set_random_seed(params.base.seed)
    model = networks.build_regularized_cnn(params.base.image_size)
    networks.compile_model(model, settings.optimizer, settings.learning_rate)
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    return lambda: throughput.timed(lambda: model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False))


def noop_repro_seconds(repeats: int = ROUNDS) -> list[float]:
    """Wall seconds of ``dvc repro`` when every stage is up to date."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(["dvc", "repro"], capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0 or "Running stage" in done.stdout:
            raise BenchmarkError(f"`dvc repro` was not a no-op:\n{done.stdout}{done.stderr}")
    return times


def noop_repro_breakdown() -> dict[str, float]:
    """Where a no-op ``dvc repro``'s time goes, in seconds: DVC's start-up
    (``dvc --version``: the interpreter and DVC's imports), reading dvc.yaml
    and dvc.lock into stages, and checking each stage's dependencies and
    outputs against the lock (what ``dvc repro`` does before deciding that
    nothing needs to run)."""
    from dvc.repo import Repo

    breakdown = {"start-up": throughput.timed(lambda: subprocess.run(["dvc", "--version"], capture_output=True, check=True))}
    started = time.perf_counter()
    with Repo() as repo, repo.lock:  # a stage is checked under the repository's lock, as repro does
        stages = list(repo.index.stages)
        breakdown["reading dvc.yaml and dvc.lock"] = time.perf_counter() - started
        for stage in stages:
            breakdown[f"checking {stage.addressing}"] = throughput.timed(stage.changed)
    return {name: round(seconds, 3) for name, seconds in breakdown.items()}


def run_benchmark(
    params: Params, data_dir: Path, *, timings_dir: Path = TIMINGS_DIR, repro: bool = True, rounds: int = ROUNDS
) -> dict:
    """Measures everything; prints each figure as it comes."""
    def say(text: str) -> None:
        print(text, flush=True)

    runtime = configure_runtime(params.base.precision)
    size, batch = params.base.image_size, params.augmented_cnn.batch_size
    result: dict[str, Any] = {
        "machine": {"device": runtime.device, "precision": runtime.precision, "cpus": os.cpu_count(),
                    "cpu": cpu_description(), "python": platform.python_version(), "tensorflow": tf.__version__},
        "image_size": size,
        "rounds": rounds,
        "targets": TARGETS,
    }
    say(f"{result['machine']['cpu']['model']}, {os.cpu_count()} cores "
        f"({', '.join(result['machine']['cpu']['vector_instruction_sets'])}); every figure: "
        f"median of {rounds} rounds (lowest-highest)")

    timings = stage_timings(timings_dir)
    total = sum(t["wall_seconds"] for t in timings.values())
    peak = max(t["peak_memory_mib"] for t in timings.values()) / 1024
    result["stages"] = timings
    result["pipeline_minutes"] = round(total / 60, 2)
    result["peak_memory_gib"] = round(peak, 2)
    say("Stages of the last dvc repro (one run: wall time, peak memory):")
    for stage, t in timings.items():
        say(f"  {stage:<20} {t['wall_seconds']:7.0f} s  {t['peak_memory_mib']:6.0f} MiB")
    say(f"  total {total / 60:.1f} min (target <= {TARGETS['pipeline_minutes']:.0f}), "
        f"peak {peak:.2f} GiB (target < {TARGETS['peak_memory_gib']:.0f})")

    rates: dict[str, dict] = {}
    # Decoding + resizing: our tf.data loading vs the chapter's photo-by-photo NumPy loading.
    chapter_arrays: dict[str, tuple] = {}

    def load_the_chapters_way() -> float:
        started = time.perf_counter()
        for split in SPLITS:
            chapter_arrays[split] = throughput.load_one_by_one(data_dir / split, size)
        return time.perf_counter() - started

    loading = interleaved({
        "ours": lambda: throughput.timed(lambda: [list(decoded_images(data_dir / split, size).batch(256)) for split in SPLITS]),
        "chapter": load_the_chapters_way,
    }, rounds)
    photos = sum(len(images) for images, _ in chapter_arrays.values())
    rates["decode_resize"] = spread([photos / t for t in loading["ours"]], 1)
    rates["chapter_numpy_loading"] = spread([photos / t for t in loading["chapter"]], 1)
    result["loading_speedup"] = spread([c / o for c, o in zip(loading["chapter"], loading["ours"])])
    say(f"Loading the {photos} photos: {shown(rates['decode_resize'], digits=0)} photos/s (tf.data) vs "
        f"{shown(rates['chapter_numpy_loading'], digits=0)} photos/s one by one into NumPy: "
        f"{shown(result['loading_speedup'], 'x', 2)} (target >= {TARGETS['loading_speedup']:.0f}x)")

    def train_set(augment: keras.layers.Layer | None) -> tf.data.Dataset:
        return make_dataset(data_dir / "train", image_size=size, batch_size=batch, shuffle=True,
                            seed=params.base.seed, augment=augment, repeat=True)

    composed = train_set(make_augmentation(params.augmentation, params.base.seed))
    layered = train_set(layered_augmentation(params.augmentation, params.base.seed))
    plain = train_set(None)
    pipelines = interleaved({"composed": lambda: throughput.dataset_rate(composed, batches=60),
                             "layered": lambda: throughput.dataset_rate(layered, batches=60)}, rounds)
    rates["augmented_pipeline"] = spread(pipelines["composed"], 1)
    rates["augmented_pipeline_five_layers"] = spread(pipelines["layered"], 1)
    say(f"Augmented input pipeline alone: {shown(rates['augmented_pipeline'], digits=0)} photos/s composed in one "
        f"resampling, {shown(rates['augmented_pipeline_five_layers'], digits=0)} photos/s as five Keras layers")

    def step_rate(build: Callable[[int], keras.Model], data: tf.data.Dataset, learning_rate: float) -> Callable[[], float]:
        def measure() -> float:
            model = networks.compile_model(build(size), "rmsprop", learning_rate)
            return throughput.train_rate(model, data, steps=30, batch_size=batch)
        return measure

    steps_measured = interleaved({
        "augmented_cnn.train": step_rate(networks.build_regularized_cnn, composed, params.augmented_cnn.learning_rate),
        "augmented_cnn.train_without_augmentation": step_rate(
            networks.build_regularized_cnn, plain, params.augmented_cnn.learning_rate),
        "scratch_cnn.train": step_rate(networks.build_scratch_cnn, plain, params.scratch_cnn.learning_rate),
    }, rounds)
    for name, values in steps_measured.items():
        rates[name] = spread(values, 1)
    result["augmentation_step_ratio"] = spread([
        a / b for a, b in zip(steps_measured["augmented_cnn.train"], steps_measured["augmented_cnn.train_without_augmentation"])
    ], 3)
    say(f"Training step, scratch_cnn: {shown(rates['scratch_cnn.train'])} photos/s")
    say(f"Training step, augmented_cnn: {shown(rates['augmented_cnn.train'])} photos/s with augmentation, "
        f"{shown(rates['augmented_cnn.train_without_augmentation'])} without: "
        f"{shown(result['augmentation_step_ratio'], digits=2)} of it (target >= {TARGETS['augmentation_step_ratio']:.0%})")

    # One augmented epoch (one pass over the training photos), each way.
    images, labels = chapter_arrays.pop("train")  # the arrays the chapter's way just loaded
    steps = -(-len(images) // batch)
    chapter_arrays.clear()
    legacy = legacy_generator(params).flow(images, labels, batch_size=batch, seed=params.base.seed)
    epochs = interleaved({"chapter": augmented_epoch_seconds(legacy, params, steps),
                          "ours": augmented_epoch_seconds(composed, params, steps)}, rounds)
    del images, legacy
    result["augmented_epoch_seconds"] = {"ours": spread(epochs["ours"], 1), "chapter": spread(epochs["chapter"], 1),
                                         "steps": steps}
    result["augmented_epoch_speedup"] = spread([c / o for c, o in zip(epochs["chapter"], epochs["ours"])])
    # The same model on cached photos with no augmentation at all: no input
    # pipeline can make the augmented epoch faster than this.
    ceiling = [c / (steps * batch / r) for c, r in zip(epochs["chapter"], steps_measured["augmented_cnn.train_without_augmentation"])]
    result["augmented_epoch_speedup_ceiling"] = spread(ceiling)
    say(f"One augmented epoch ({steps} steps of {batch}): {shown(result['augmented_epoch_seconds']['ours'], ' s', 0)} "
        f"(tf.data) vs {shown(result['augmented_epoch_seconds']['chapter'], ' s', 0)} (ImageDataGenerator.flow): "
        f"{shown(result['augmented_epoch_speedup'], 'x', 2)}; an input pipeline that cost nothing would make it "
        f"{shown(result['augmented_epoch_speedup_ceiling'], 'x', 2)} (target >= {TARGETS['augmented_epoch_speedup']}x, "
        "or 90 % of that ceiling where it is lower)")

    tuned = throughput.vgg16_model(size, trainable_from=params.fine_tune.trainable_from, preprocessing=params.vgg16.preprocessing)
    networks.compile_model(tuned, "rmsprop", params.fine_tune.learning_rate)
    rates["fine_tune.train"] = spread([throughput.train_rate(tuned, composed, steps=8, batch_size=batch) for _ in range(rounds)], 2)
    say(f"Training step, fine_tune: {shown(rates['fine_tune.train'], digits=2)} photos/s")

    frozen = throughput.vgg16_model(size, trainable_from=None, preprocessing=params.vgg16.preprocessing)
    val = next(iter(make_dataset(data_dir / "validation", image_size=size, batch_size=256, shuffle=False, seed=0)))[0].numpy()
    flops = throughput.conv_flops_per_image(frozen)
    vgg = interleaved({
        "extraction": lambda: throughput.predict_rate(frozen, val, params.vgg16.feature_batch_size, repeats=1),
        "matmul": throughput.matmul_flops_per_second,
    }, rounds)
    rates["vgg16_extraction"] = spread(vgg["extraction"], 2)
    fractions = [flops * e / m for e, m in zip(vgg["extraction"], vgg["matmul"])]
    result["vgg16_flops"] = {
        "per_image_gflop": round(flops / 1e9, 2),
        "achieved_gflops": spread([flops * e / 1e9 for e in vgg["extraction"]], 1),
        "matmul_gflops": spread([m / 1e9 for m in vgg["matmul"]], 1),
    }
    result["vgg16_fraction_of_matmul"] = spread(fractions, 3)
    say(f"VGG16 extraction: {shown(rates['vgg16_extraction'])} photos/s = "
        f"{shown(result['vgg16_flops']['achieved_gflops'], digits=0)} GFLOP/s against "
        f"{shown(result['vgg16_flops']['matmul_gflops'], digits=0)} GFLOP/s of dense matmul in the same rounds: "
        f"{shown(result['vgg16_fraction_of_matmul'], digits=2)} (target >= {TARGETS['vgg16_fraction_of_matmul']:.0%})")
    result["images_per_second"] = rates

    if repro:
        result["noop_repro_seconds"] = spread(noop_repro_seconds(rounds))
        say(f"dvc repro with nothing to do: {shown(result['noop_repro_seconds'], ' s', 2)} "
            f"(target < {TARGETS['noop_repro_seconds']:.0f} s); where the time goes (s):")
        result["noop_repro_breakdown"] = noop_repro_breakdown()
        for part, seconds in result["noop_repro_breakdown"].items():
            say(f"  {part:<40} {seconds:6.2f}")
    result["met"] = targets_met(result)
    return result


def _median(figure: Any) -> float:
    return figure["median"] if isinstance(figure, dict) else figure


def targets_met(result: dict) -> dict[str, bool]:
    """Which targets the measured figures (their medians) meet; a figure not measured is left out."""
    checks = {
        "pipeline_minutes": lambda v, t: v <= t,
        "peak_memory_gib": lambda v, t: v < t,
        "loading_speedup": lambda v, t: v >= t,
        "augmentation_step_ratio": lambda v, t: v >= t,
        # Wherever the ceiling allows it: 90 % of the ceiling when that is below the target.
        "augmented_epoch_speedup": lambda v, t: v >= min(
            t, 0.9 * _median(result.get("augmented_epoch_speedup_ceiling", {"median": float("inf")}))),
        "vgg16_fraction_of_matmul": lambda v, t: v >= t,
        "noop_repro_seconds": lambda v, t: v < t,
    }
    return {name: check(_median(result[name]), TARGETS[name]) for name, check in checks.items() if name in result}


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
    write_json_atomically(result, args.out)
    missed = [name for name, ok in result["met"].items() if not ok]
    print(f"Wrote {args.out}. Targets missed: {', '.join(missed) if missed else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
