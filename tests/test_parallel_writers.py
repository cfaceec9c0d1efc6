"""Two processes writing one SQLite MLflow store at once lose no metric and
never fail with "database is locked", even on a store neither has created yet."""

from __future__ import annotations

import pytest

from catsdogs.tracking.store_contention import measure

pytestmark = pytest.mark.slow


def test_two_writers_of_300_batches_on_a_fresh_store_lose_nothing(tmp_path):
    # "project-fresh": both start on no database at all, through
    # tracking.use_experiment, as the first two stages of `dvc queue start -j 2`.
    row = measure("project-fresh", writers=2, batches=300, folder=tmp_path)
    print(f"\n{row}")
    assert row["failed_calls"] == 0, row["first_error"]
    assert row["locked_errors"] == 0
    assert row["stored"] == row["expected"] == 2 * 300 * 5
