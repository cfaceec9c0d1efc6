"""Stage build_small_dataset: the train/validation/test folders of cat and dog photos.

Decodes every raw photo once, skips unusable files and duplicates (listed in
<out>/skipped.csv), then deals build_small_dataset.{train,validation,test}_per_class
photos of each class into <out>/<split>/<label>/, with <out>/manifest.csv.

Usage:
    python stages/build_small_dataset.py --params params.yaml --raw data/raw \\
        --out data/small --metrics metrics/dataset.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from catsdogs.core.config import load_params
from catsdogs.core.stage_runner import run_stage
from catsdogs.data.dataset import build_small_dataset, write_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--raw", type=Path, required=True, help="folder holding cat/ and dog/ (read only)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create or replace")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON file for the DVC metrics")
    args = parser.parse_args()

    params = load_params(args.params)
    summary = build_small_dataset(args.raw, args.out, params.build_small_dataset, seed=params.base.seed)
    write_metrics(summary, args.metrics)
    print(f"build_small_dataset: {summary}")


if __name__ == "__main__":
    run_stage("build_small_dataset", main)
