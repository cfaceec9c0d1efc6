"""Every stage records its wall time and peak memory; user errors exit cleanly."""

from __future__ import annotations

import json

import pytest

from catsdogs.core.errors import CatsDogsError
from catsdogs.core.stage_runner import run_stage, timing_path


def test_a_stage_records_its_wall_time_and_peak_memory(tmp_path, capsys):
    path = tmp_path / "timings" / "demo.json"
    # Written, not just allocated: zeroed pages would not count as resident.
    run_stage("demo", lambda: b"\x01" * (50 * 1024 * 1024), timings=path)
    record = json.loads(path.read_text())
    assert record["stage"] == "demo"
    # Wall time counts from process start, so it includes this test session so far.
    assert record["wall_seconds"] > 0
    assert record["peak_memory_mib"] > 50
    assert "demo:" in capsys.readouterr().out


def test_a_failed_stage_exits_1_with_its_message_and_records_nothing(tmp_path, capsys):
    path = tmp_path / "demo.json"

    def fail() -> None:
        raise CatsDogsError("params.yaml: scratch_cnn.epochs: must be greater than 0")

    with pytest.raises(SystemExit) as exit_info:
        run_stage("demo", fail, timings=path)
    assert exit_info.value.code == 1
    assert "demo: error: params.yaml: scratch_cnn.epochs" in capsys.readouterr().err
    assert not path.exists()


def test_default_timing_path_is_a_dvc_metric_per_stage():
    assert str(timing_path("fine_tune")) == "metrics/timings/fine_tune.json"
