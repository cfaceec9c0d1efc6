"""``make compare``: the workspace, its commit and that commit's experiments
side by side, each model's test accuracy, F1 and training time, in 120 columns.

``dvc exp show`` names a metric ``<file>:<key>`` once two files share the
key, as every ``metrics/<model>.json`` does (that sameness is what keeps
``dvc metrics show`` one row per model), and it has no way to put 18 such
columns in one terminal: it folds them into ``…``. This reads what
``dvc exp show --json`` reports, experiments included (queued, running or
finished, in the workspace, ``--temp`` or the queue), and prints one block
per figure, a row per experiment and a column per model, then the params
each experiment changed::

    python -m catsdogs.experiments.compare            # what make compare runs
    python -m catsdogs.experiments.compare -A         # every commit's experiments (dvc exp show -A)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from catsdogs.core.config import TRAINING_STAGES
from catsdogs.core.errors import CatsDogsError

WIDTH = 120
NAME_WIDTH = 26
# (title, key of metrics/<model>.json, how a value prints)
FIGURES = (
    ("test accuracy (* champion)", "test_accuracy", lambda v: f"{v:.3f}"),
    ("test F1", "test_f1", lambda v: f"{v:.3f}"),
    ("training minutes", "training_seconds", lambda v: f"{v / 60:.1f}"),
)


class CompareError(CatsDogsError):
    """``dvc exp show`` failed or said something this cannot read."""


@dataclass
class Row:
    """One line of the comparison: the workspace, a commit or an experiment."""

    name: str
    rev: str
    state: str  # "" for the workspace and commits; else DVC's: queued, running, success, failed
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]]  # model -> its metrics/<model>.json
    baseline: Row | None = field(default=None, repr=False)

    def changes(self) -> str:
        """The params that differ from the baseline's, as ``dvc exp run -S`` would set them."""
        if self.baseline is None:
            return ""
        base = self.baseline.params
        keys = sorted(set(self.params) | set(base))
        return ", ".join(f"{k}={self.params.get(k, '(none)')}" for k in keys if self.params.get(k) != base.get(k))


def _flat_params(data: Mapping[str, Any] | None) -> dict[str, Any]:
    params = ((data or {}).get("params") or {}).get("params.yaml") or {}
    values = params.get("data") or {}
    if not values:
        return {}
    flat = pd.json_normalize(values, sep=".").iloc[0].to_dict()
    return {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in flat.items()}


def _model_metrics(data: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    files = (data or {}).get("metrics") or {}
    found = {}
    for model in TRAINING_STAGES:
        entry = files.get(f"metrics/{model}.json") or {}
        if entry.get("data"):
            found[model] = entry["data"]
    return found


def _row(entry: Mapping[str, Any], name: str, state: str = "", baseline: Row | None = None) -> Row:
    data = entry.get("data")
    return Row(name, str(entry.get("rev", ""))[:7], state, _flat_params(data), _model_metrics(data), baseline)


def rows_from_exp_show(shown: Sequence[Mapping[str, Any]]) -> list[Row]:
    """The rows of ``dvc exp show --json`` output: each commit, then its experiments.

    The workspace's baseline is the commit after it (HEAD); an experiment's
    is the commit it was run from.
    """
    rows: list[Row] = []
    workspace: Row | None = None
    for entry in shown:
        if entry.get("rev") == "workspace":
            workspace = _row(entry, "workspace")
            rows.append(workspace)
            continue
        commit = _row(entry, entry.get("name") or str(entry.get("rev", ""))[:7])
        if workspace is not None and workspace.baseline is None:
            workspace.baseline = commit
        rows.append(commit)
        for experiment in entry.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state") or "success"
            for rev in experiment.get("revs") or []:
                rows.append(_row(rev, rev.get("name") or experiment.get("name") or str(rev.get("rev"))[:7], state, commit))
    return rows


def _label(row: Row) -> str:
    # Experiments sit under the commit they started from, as in dvc exp show.
    label = ("  " if row.baseline is not None and row.name != "workspace" else "") + row.name
    return label if len(label) <= NAME_WIDTH else label[: NAME_WIDTH - 1] + "…"


def _cell(metrics: Mapping[str, Any] | None, key: str, show: Any, champion_mark: bool) -> str:
    value = (metrics or {}).get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "- "
    mark = "*" if champion_mark and (metrics or {}).get("champion") is True else " "
    return show(value) + mark


def figure_block(rows: Sequence[Row], title: str, key: str, show: Any, champion_mark: bool = False) -> str:
    """One block: the title over the names, a column per model, ``-`` where there is no figure.

    A value's last character is its champion mark or a space, so the numbers line up.
    """
    widths = [len(m) + 2 for m in TRAINING_STAGES]
    lines = [f"{title:<{NAME_WIDTH}}" + "".join(f"{m:>{w}}" for m, w in zip(TRAINING_STAGES, widths)) + " "]
    for row in rows:
        cells = [_cell(row.metrics.get(m), key, show, champion_mark) for m in TRAINING_STAGES]
        lines.append(f"{_label(row):<{NAME_WIDTH}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    return "\n".join(line.rstrip() for line in lines)


def render(rows: Sequence[Row]) -> str:
    """The whole comparison: a block per figure, then what each experiment changed."""
    if not rows:
        return "no commits or experiments to compare\n"
    parts = [figure_block(rows, title, key, show, champion_mark=key == "test_accuracy") for title, key, show in FIGURES]
    lines = ["changed params (against the commit each row starts from)"]
    for r in rows:
        note = "(baseline)" if r.baseline is None else (r.changes() or "(none)")
        if r.state and r.state != "success":
            note = f"[{r.state}] {note}"
        lines.append(f"{_label(r):<{NAME_WIDTH}}  {note}")
    parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def exp_show_json(args: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Runs ``dvc exp show --json`` with extra arguments and parses its output.

    Raises:
        CompareError: dvc failed or printed something other than JSON.
    """
    command = ["dvc", "exp", "show", "--json", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise CompareError("dvc is not on PATH: activate .venv or run `make compare`") from None
    if done.returncode != 0:
        raise CompareError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise CompareError(f"{' '.join(command)} printed no JSON ({err}): {done.stdout[:200]!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs.experiments.compare", description=__doc__.splitlines()[0],
    )
    parser.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed to dvc exp show, e.g. -A or --rev main")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(render(rows_from_exp_show(exp_show_json(args.dvc_args))))
    except CompareError as err:
        print(f"compare: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
