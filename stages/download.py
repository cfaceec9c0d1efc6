"""Stage download: puts the raw cat and dog photos in data/raw/cat and data/raw/dog.

Tries each source under download.sources in params.yaml in order (a local zip
or folder, or a URL downloaded into --downloads and kept for the next run).

Usage:
    python stages/download.py --params params.yaml --out data/raw --downloads data/downloads
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from catsdogs.core.config import load_params
from catsdogs.core.project import project_root
from catsdogs.core.stage_runner import run_stage
from catsdogs.data.download import fetch_raw_photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="folder to fill with cat/ and dog/")
    parser.add_argument("--downloads", type=Path, required=True, help="folder for downloaded archives")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="download: %(message)s")

    params = load_params(args.params).download
    summary = fetch_raw_photos(
        params.sources,
        args.out,
        # Relative source paths start at the project, also when an experiment
        # runs this in a copy under .dvc/tmp/exps/.
        root=project_root(args.params.resolve().parent),
        downloads_dir=args.downloads,
        max_entry_bytes=params.max_entry_mb * 1024 * 1024,
    )
    print(f"download: {summary} -> {args.out}")


if __name__ == "__main__":
    run_stage("download", main)
