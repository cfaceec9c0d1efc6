"""Resuming a training stage's fit from its last completed epoch.

After every epoch, :class:`EpochCheckpoint` writes the whole training state
into one file under ``<project>/.dvc/tmp/resume/<stage>-<key>/``: outside
the outputs that DVC deletes before it reruns a stage, and git-ignored by
DVC itself. The key is a digest of what the fit depends on (the stage, every
parameter it reads, the dataset manifest's digest, its extra tags such as
the VGG16 weights' digest, and the package's source code), so a changed
parameter, dataset or code never resumes a stale fit. The folder is removed
once the stage has written its outputs.

What "the whole state" is, so that a resumed fit ends with the same weights
as one that was never stopped:

- every model variable, which in Keras 3 includes the state of each layer's
  random seed generator (dropout), and every optimizer variable (its step
  count and slots);
- the history of the completed epochs and the seconds they took;
- for ``keep: best_*``, the best epoch so far, its monitored value and its
  weights, which the stopped attempt held only in memory;
- the position of the input pipeline, which is not saved but replayed:
  :func:`fast_forward` runs the training batches of the completed epochs
  through the pipeline again without training, which advances the shuffle
  order and the augmentation's random state exactly as training did
  (decoding and augmenting cost a fraction of a training step).

Keras' ``BackupAndRestore`` restores the weights, optimizer and epoch, but
not the input pipeline's position, and writes its files in place; hence this.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from catsdogs.core import stopping
from catsdogs.core.atomic import write_atomically

RESUME_DIR = Path(".dvc") / "tmp" / "resume"
STATE_FILE = "state.npz"
_PACKAGE = Path(__file__).resolve().parents[1]  # src/catsdogs, every subpackage


def code_digest() -> str:
    """SHA-256 over the package's source files: a code change starts afresh."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fit_key(stage: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """A short digest of everything a fit depends on.

    Args:
        stage: the DVC stage.
        params: every value the stage reads, flat (split sizes included).
        tags: the run's tags that describe inputs (the manifest's digest,
            the VGG16 weights' digest, ...).
    """
    material = json.dumps(
        {"stage": stage, "params": {k: str(v) for k, v in params.items()}, "inputs": dict(tags), "code": code_digest()},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Kept:
    """The best epoch a ``keep: best_*`` fit has seen so far."""

    value: float  # the monitored validation metric at that epoch
    epoch: int  # 0-based, as Keras counts
    weights: list[np.ndarray]  # ``model.get_weights()`` at its end


@dataclass(frozen=True)
class Restored:
    """What a previous attempt left: epochs done, their history and time."""

    epochs_done: int
    history: list[dict[str, float]]
    seconds: float
    run_id: str | None
    kept: Kept | None = None


class ResumeState:
    """One fit's resume folder, held under an exclusive lock while in use.

    A second process training the same fit with the same parameters at the
    same time (two identical queued experiments) finds the lock taken and
    trains without resume state rather than overwrite the first one's.
    """

    def __init__(self, root: Path, stage: str, key: str) -> None:
        self.stage = stage
        self.folder = Path(root) / RESUME_DIR / f"{stage}-{key}"
        self.path = self.folder / STATE_FILE
        self._lock: io.TextIOWrapper | None = None

    def __enter__(self) -> ResumeState:
        """Takes the folder's lock; :attr:`held` says whether it was free."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / "lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            print(f"{self.stage}: another process is training the same fit; this one keeps no resume state")
        else:
            self._lock = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def restore(self, model: keras.Model) -> Restored | None:
        """Loads the saved state into ``model`` and its optimizer.

        Returns:
            What the previous attempts did, or None when there is nothing to
            resume, or the state does not fit the model (it is then ignored).
        """
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                meta = json.loads(str(saved["meta"]))
                model_values = [saved[f"model_{i}"] for i in range(meta["model_variables"])]
                optimizer_values = [saved[f"optimizer_{i}"] for i in range(meta["optimizer_variables"])]
                kept = meta.get("kept")
                if kept is not None:
                    kept = Kept(kept["value"], kept["epoch"], [saved[f"kept_{i}"] for i in range(kept["weights"])])
        except (OSError, ValueError, KeyError) as err:
            print(f"{self.stage}: ignoring unreadable resume state {self.path} ({err}); training from epoch 1")
            return None
        optimizer = model.optimizer
        if not optimizer.built:
            # Inside the strategy's scope, so that under MirroredStrategy the
            # slots are mirrored like the weights they belong to.
            with model.distribute_strategy.scope():
                optimizer.build(model.trainable_variables)
        targets = [(model.variables, model_values), (optimizer.variables, optimizer_values)]
        if any(
            len(variables) != len(values) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values))
            for variables, values in targets
        ):
            print(f"{self.stage}: resume state {self.path} does not fit this model; training from epoch 1")
            return None
        for variables, values in targets:
            for variable, value in zip(variables, values):
                variable.assign(value)
        return Restored(meta["epochs_done"], meta["history"], meta["seconds"], meta.get("run_id"), kept)

    def save(
        self,
        model: keras.Model,
        epochs_done: int,
        history: list[dict[str, float]],
        seconds: float,
        run_id: str | None,
        kept: Kept | None = None,
    ) -> None:
        """Writes the state after ``epochs_done`` epochs, atomically."""
        arrays = {f"model_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
        optimizer_variables = model.optimizer.variables
        arrays.update({f"optimizer_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(optimizer_variables)})
        meta = {
            "epochs_done": epochs_done,
            "history": history,
            "seconds": seconds,
            "run_id": run_id,
            "model_variables": len(model.variables),
            "optimizer_variables": len(optimizer_variables),
        }
        if kept is not None:
            arrays.update({f"kept_{i}": np.asarray(w) for i, w in enumerate(kept.weights)})
            meta["kept"] = {"value": float(kept.value), "epoch": int(kept.epoch), "weights": len(kept.weights)}
        with stopping.deferred():
            write_atomically(self.path, lambda tmp: np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays))

    def clear(self) -> None:
        """Removes this fit's folder, and older fits' folders of the same stage
        that no running process holds (their parameters changed since)."""
        self.__exit__()
        shutil.rmtree(self.folder, ignore_errors=True)
        for other in self.folder.parent.glob(f"{self.stage}-*"):
            lock_path = other / "lock"
            try:
                with open(lock_path, "a") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    shutil.rmtree(other, ignore_errors=True)
            except (BlockingIOError, FileNotFoundError, NotADirectoryError):
                continue


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the resume state at the end of every epoch but the last.

    :attr:`keeper`, when :func:`catsdogs.training.loop.fit` sets it, is the
    ``keep: best_*`` callback whose best epoch the state carries; it runs
    before this one, so the epoch just ended is already counted.
    """

    def __init__(self, state: ResumeState, restored: Restored | None, run_id: str | None) -> None:
        super().__init__()
        self.state = state
        self.history = list(restored.history) if restored else []
        self.prior_seconds = restored.seconds if restored else 0.0
        self.run_id = run_id
        self.started = time.perf_counter()
        self.keeper: keras.callbacks.EarlyStopping | None = None

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.history.append({key: float(value) for key, value in (logs or {}).items()})
        if epoch + 1 < self.params["epochs"]:
            seconds = self.prior_seconds + time.perf_counter() - self.started
            keeper = self.keeper
            kept = None if keeper is None or keeper.best_weights is None else Kept(keeper.best, keeper.best_epoch, keeper.best_weights)
            self.state.save(self.model, epoch + 1, self.history, seconds, self.run_id, kept)


def fast_forward(train: tf.data.Dataset, epochs_done: int, steps_per_epoch: int | None) -> tf.data.Dataset:
    """The training stream as it stands after ``epochs_done`` epochs.

    :func:`catsdogs.training.loop.fit` reads one repeating stream of batches with
    a single iterator, so skipping the batches already trained on gives the
    same stream. Every skipped batch is decoded, shuffled and augmented as in
    training, which is what puts the shuffle and augmentation random state
    where it was. A stream of unknown length (``steps_per_epoch`` None)
    cannot be placed and is returned as it is.
    """
    if epochs_done == 0 or steps_per_epoch is None:
        return train
    return train.skip(epochs_done * steps_per_epoch)
