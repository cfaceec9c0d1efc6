"""Which pipeline execution a stage runs in, and whether it is a DVC experiment.

DVC runs every stage as a child process (through a shell) of the one ``dvc``
process that reproduces the pipeline: ``dvc repro``, a workspace
``dvc exp run``, or, for ``--queue`` and ``--temp``, the ``dvc exp exec-run``
process DVC starts for each experiment. That process's id and start time
name the execution: every stage of it sees the same ones, two experiments of
``dvc queue start -j 2`` see different ones, and unlike an experiment's name
they never repeat (``dvc exp run -f -n NAME`` reuses a name). A stage started
by hand, outside DVC, is an execution of its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import yaml

# DVC sets both in every `dvc exp run` (workspace, --temp or --queue; the name
# is a random one without -n); a plain `dvc repro` sets neither.
EXPERIMENT_VARIABLES = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")
# The branch whose params an execution's params are compared with.
BASELINE_BRANCH = "main"


@dataclass(frozen=True)
class Execution:
    """One run of the pipeline, as every stage of it identifies it."""

    key: str  # "<host>:<pid>:<start time>" of the process driving the stages[, ":<experiment>"]
    started: float  # that process's start, in seconds since the epoch
    command: str  # its command line, e.g. "dvc exp exec-run --infofile ..."
    experiment: str | None  # the DVC experiment's name, None for `dvc repro`


def experiment_name(env: Mapping[str, str] | None = None) -> str | None:
    """Says whether the code runs inside ``dvc exp run``.

    Args:
        env: the environment; ``os.environ`` by default.

    Returns:
        The experiment's name (or its baseline commit when DVC gave no name),
        or None outside an experiment.
    """
    env = os.environ if env is None else env
    for variable in EXPERIMENT_VARIABLES:
        if env.get(variable):
            return env[variable]
    return None


def is_dvc_command(cmdline: Sequence[str]) -> bool:
    """True for ``dvc ...``, ``python .../bin/dvc ...`` and ``python -m dvc ...``."""
    head = list(cmdline[:3])
    if any(Path(arg).name == "dvc" for arg in head[:2]):
        return True
    return head[1:3] == ["-m", "dvc"]


def current_execution(process: psutil.Process | None = None, env: Mapping[str, str] | None = None) -> Execution:
    """Finds the execution this process belongs to.

    Args:
        process: the stage's process; this one by default.
        env: the environment; ``os.environ`` by default.

    Returns:
        The nearest ``dvc`` ancestor's execution, or, without one, this
        process's own.
    """
    process = psutil.Process() if process is None else process
    driver = process
    for ancestor in process.parents():
        try:
            if is_dvc_command(ancestor.cmdline()):
                driver = ancestor
                break
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    started = driver.create_time()
    experiment = experiment_name(env)
    key = f"{socket.gethostname()}:{driver.pid}:{started:.2f}"
    return Execution(
        key=f"{key}:{experiment}" if experiment else key,
        started=started,
        command=" ".join(driver.cmdline())[:250],
        experiment=experiment,
    )


def flat_params(text: str) -> dict[str, object]:
    """``{"section.key": value}`` of a params.yaml's text; lists stay one value."""
    loaded = yaml.safe_load(text) or {}
    if not isinstance(loaded, dict):
        return {}
    return pd.json_normalize(loaded, sep=".").iloc[0].to_dict() if loaded else {}


def baseline_params(repo: Path, params_file: str = "params.yaml") -> tuple[str, str] | None:
    """The params file as committed on :data:`BASELINE_BRANCH`, else at ``HEAD``.

    Args:
        repo: a folder in the project's git repository (the workspace, not an
            experiment's copy, which has no branches).
        params_file: the params file's path in the repository.

    Returns:
        ``(revision, text)``, or None without git or without the file.
    """
    for revision in (BASELINE_BRANCH, "HEAD"):
        try:
            done = subprocess.run(
                ["git", "show", f"{revision}:{params_file}"],
                cwd=repo, capture_output=True, text=True, timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if done.returncode == 0:
            return revision, done.stdout
    return None


def changed_params(baseline: Mapping[str, object], current: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    """``{key: (baseline value, current value)}`` for every key whose value differs.

    A key only one side has is paired with None on the other.
    """
    keys = sorted(baseline.keys() | current.keys())
    return {
        key: (baseline.get(key), current.get(key))
        for key in keys
        if str(baseline.get(key)) != str(current.get(key))
    }
