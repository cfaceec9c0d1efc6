"""How much a model's score moves with the seed: mean and spread over DVC experiments.

One seed is one draw: the split, the shuffling and the initial weights all
follow ``base.seed``. Queue the from-scratch trio under several seeds, run
the queue, then summarise the experiments::

    dvc exp run --queue -S 'base.seed=1,2,3' cnn@scratch_cnn cnn@regularized_cnn cnn@augmented_cnn
    dvc queue start --jobs 1
    dvc queue status                     # until every task is Success
    python -m catsdogs.experiments.seeds             # writes reports/seeds.md and reports/seeds.csv

Queued experiments may also run the whole pipeline (no stage names): the
report then adds each model's test accuracy to its validation accuracy.
An experiment commit also carries the files of the stages it did not rerun
(the VGG16 models' and evaluate's, from the seed of the commit it started
from): a figure counts for a seed only when that commit's ``dvc.lock``
says the stage that wrote it ran under that seed.
The experiments of the workspace's commit are listed by
``dvc.api.exp_show``; each one's ``metrics/training/<stage>.json`` (and
headline ``metrics/<stage>.json``) is read from its commit, where Git
versions them. With ``--seeds 1,2,3`` only those seeds count; an
experiment that failed, or a seed run twice, counts once or not at all.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import yaml

from catsdogs.core.config import TRAINING_STAGES
from catsdogs.core.study import dvc_stage
from catsdogs.core.errors import CatsDogsError

SEED_PARAM = "base.seed"
# The numbers summarised, per model: (column in exp_show, label in the report).
SCORES = (("best_val_accuracy", "validation accuracy (best epoch)"), ("test_accuracy", "test accuracy"))


class SeedReportError(CatsDogsError):
    """No experiment to summarise, or the experiments cannot be read."""


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _param(record: Mapping[str, object], key: str) -> object:
    """A param as ``dvc.api.exp_show`` names it: the bare key, or ``params.yaml:<key>`` when names collide."""
    return record.get(key, record.get(f"params.yaml:{key}"))


Reader = Callable[[str, str], "dict | None"]


def scores_by_seed(
    records: Iterable[Mapping[str, object]], read: Reader, stages: Sequence[str] = TRAINING_STAGES
) -> pd.DataFrame:
    """One row per (seed, model) with its validation and, when evaluated, test accuracy.

    Args:
        records: rows of ``dvc.api.exp_show`` (``rev``, ``State``, ``base.seed``, ...).
        read: ``read(rev, path)`` gives a JSON file of that experiment
            commit as a dict, or None when it has none: the training
            summaries ``metrics/training/<stage>.json`` and the headline
            ``metrics/<stage>.json`` are read through it.
        stages: the models to look for.

    Returns:
        Columns ``seed``, ``experiment``, ``model`` and the :data:`SCORES`;
        one experiment per seed (the first listed that finished).
    """
    rows, seen = [], set()
    for record in records:
        seed, rev = _param(record, SEED_PARAM), record.get("rev")
        if seed is None or rev is None or record.get("State") not in (None, "Success") or seed in seen:
            continue
        found = False
        lock = (read(str(rev), "dvc.lock") or {}).get("stages", {})
        evaluated = _ran_with_seed(lock.get("evaluate"), seed)
        for stage in stages:
            # Commits made before dvc.yaml's `cnn` template name the stage by its model.
            ran = _ran_with_seed(lock.get(dvc_stage(stage), lock.get(stage)), seed)
            training = (read(str(rev), f"metrics/training/{stage}.json") or {}) if ran else {}
            headline = (read(str(rev), f"metrics/{stage}.json") or {}) if evaluated else {}
            validation, test = _number(training.get("best_val_accuracy")), _number(headline.get("test_accuracy"))
            if validation is None and test is None:
                continue
            found = True
            rows.append({"seed": int(seed), "experiment": record.get("Experiment") or rev,
                         "model": stage, "best_val_accuracy": validation, "test_accuracy": test})
        if found:
            seen.add(seed)
    return pd.DataFrame(rows, columns=["seed", "experiment", "model", *(key for key, _ in SCORES)])


def _ran_with_seed(entry: Mapping[str, object] | None, seed: object) -> bool:
    """Whether a dvc.lock stage entry records ``base.seed`` = ``seed`` (as ``base.seed`` or inside ``base``)."""
    params = ((entry or {}).get("params") or {}).get("params.yaml") or {}
    base = params.get("base")
    recorded = params.get(SEED_PARAM, base.get("seed") if isinstance(base, Mapping) else None)
    return recorded is not None and recorded == seed


def spread(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model: seeds, and the mean, sample standard deviation, min and max of each score."""
    order = {stage: i for i, stage in enumerate(TRAINING_STAGES)}
    parts = []
    for key, _ in SCORES:
        grouped = scores.dropna(subset=[key]).groupby("model")[key]
        summary = grouped.agg(["count", "mean", "std", "min", "max"])
        summary.columns = [f"{key}_{c}" if c != "count" else f"{key}_seeds" for c in summary.columns]
        parts.append(summary)
    table = pd.concat(parts, axis=1).reset_index()
    for key, _ in SCORES:
        table[f"{key}_seeds"] = table[f"{key}_seeds"].fillna(0).astype(int)
    return table.sort_values("model", key=lambda m: m.map(order)).reset_index(drop=True)


def seeds_markdown(scores: pd.DataFrame, table: pd.DataFrame) -> str:
    """The report: per model the mean +/- standard deviation over seeds, then every seed's figures."""
    seeds = sorted(scores["seed"].unique())
    lines = [
        "# Seed variance",
        "",
        f"Each model trained under {len(seeds)} seeds ({', '.join(map(str, seeds))}); a seed draws the split, "
        "the shuffling and the initial weights. Mean +/- sample standard deviation, and the range:",
        "",
        "| Model | Seeds | " + " | ".join(label.capitalize() for _, label in SCORES) + " |",
        "| :--- | ---: | " + " | ".join("---:" for _ in SCORES) + " |",
    ]
    for row in table.itertuples(index=False):
        cells = []
        for key, _ in SCORES:
            n = getattr(row, f"{key}_seeds")
            if not n:
                cells.append("-")
                continue
            std = getattr(row, f"{key}_std")
            std_text = "-" if math.isnan(std) else f"{std:.3f}"
            cells.append(f"{getattr(row, f'{key}_mean'):.3f} +/- {std_text} ({getattr(row, f'{key}_min'):.3f}-{getattr(row, f'{key}_max'):.3f})")
        count = max(getattr(row, f"{key}_seeds") for key, _ in SCORES)
        lines.append(f"| {row.model} | {count} | " + " | ".join(cells) + " |")
    lines += ["", "## Every seed", "", "| Seed | Model | Validation accuracy | Test accuracy |", "| ---: | :--- | ---: | ---: |"]
    for row in scores.sort_values(["seed", "model"]).itertuples(index=False):
        test = "-" if row.test_accuracy is None or math.isnan(row.test_accuracy) else f"{row.test_accuracy:.3f}"
        val = "-" if row.best_val_accuracy is None or math.isnan(row.best_val_accuracy) else f"{row.best_val_accuracy:.3f}"
        lines.append(f"| {row.seed} | {row.model} | {val} | {test} |")
    return "\n".join(lines) + "\n"


def experiment_records(repo: Path) -> list[dict]:
    """Every experiment of the workspace's commit, as ``dvc.api.exp_show`` lists them (not the workspace row)."""
    import dvc.api  # slow to import: only when reading experiments

    try:
        rows = dvc.api.exp_show(repo=str(repo))
    except Exception as err:  # DVC raises its own kinds; its message says what went wrong
        raise SeedReportError(f"cannot list the DVC experiments of {repo}: {err}") from err
    return [row for row in rows if row.get("rev") not in (None, "workspace")]


def git_reader(repo: Path) -> Reader:
    """Reads a JSON file (or dvc.lock, YAML) as an experiment commit holds it (Git versions both)."""

    def read(rev: str, path: str) -> dict | None:
        done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
        if done.returncode != 0:
            return None
        try:
            return yaml.safe_load(done.stdout) if path.endswith((".lock", ".yaml")) else json.loads(done.stdout)
        except (json.JSONDecodeError, yaml.YAMLError):
            return None

    return read


def write_seed_report(
    records: Iterable[Mapping[str, object]], read: Reader, out_dir: Path, seeds: Sequence[int] | None = None
) -> pd.DataFrame:
    """Writes ``seeds.md`` and ``seeds.csv`` into ``out_dir`` from experiment rows.

    Raises:
        SeedReportError: no experiment with model metrics (for the seeds asked).
    """
    scores = scores_by_seed(records, read)
    if seeds is not None:
        scores = scores[scores["seed"].isin(seeds)]
    if scores.empty:
        raise SeedReportError(
            "no finished experiment holds model metrics"
            + (f" for seeds {', '.join(map(str, seeds))}" if seeds else "")
            + ": queue them with `dvc exp run --queue -S 'base.seed=1,2,3' cnn@scratch_cnn cnn@regularized_cnn cnn@augmented_cnn`"
            " and run `dvc queue start`"
        )
    table = spread(scores)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "seeds.csv", index=False, float_format="%.6g")
    (out_dir / "seeds.md").write_text(seeds_markdown(scores, table), encoding="utf-8")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("."), help="the DVC project (the current folder by default)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder of seeds.md and seeds.csv")
    parser.add_argument("--seeds", type=lambda t: [int(s) for s in t.split(",") if s.strip()], default=None,
                        help="comma-separated seeds to count (all by default)")
    args = parser.parse_args(argv)
    try:
        table = write_seed_report(experiment_records(args.repo), git_reader(args.repo), args.out, args.seeds)
    except SeedReportError as err:
        raise SystemExit(f"seeds: {err}") from None
    print((args.out / "seeds.md").read_text(encoding="utf-8"))
    print(f"seeds: {len(table)} models summarised in {args.out / 'seeds.md'} and {args.out / 'seeds.csv'}")


if __name__ == "__main__":
    main()
