"""Runs every photo of the small dataset through the frozen ImageNet VGG16 once.

The features are a DVC output, so retraining the vgg16_features head (any
change to its section of params.yaml) never recomputes them.

Usage (as dvc.yaml runs it)::

    python stages/vgg16_bottleneck.py --params params.yaml --data data/small --out data/features
"""

import argparse
from pathlib import Path

from catsdogs.core.config import load_params
from catsdogs.core.stage_runner import run_stage
from catsdogs.models.bottleneck import extract_bottleneck_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True, help="the small dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for <split>.npz")
    args = parser.parse_args()
    shapes = extract_bottleneck_features(load_params(args.params), data_dir=args.data, out_dir=args.out)
    for split, shape in shapes.items():
        print(f"{split}: features {shape}")


if __name__ == "__main__":
    run_stage("vgg16_bottleneck", main)
