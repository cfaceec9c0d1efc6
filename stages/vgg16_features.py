"""Trains the chapter's dense head on VGG16 bottleneck features.

Saves the whole model (preprocessing + frozen VGG16 + head), which takes raw photos.

Usage (as dvc.yaml runs it)::

    python stages/vgg16_features.py --params params.yaml --data data/small --features data/features \
        --model models/vgg16_features.keras --metrics metrics/training/vgg16_features.json --plots plots/vgg16_features
"""

from pathlib import Path

from catsdogs.config import load_params
from catsdogs.model_stage import model_stage_arguments
from catsdogs.stage_runner import run_stage
from catsdogs.transfer_stages import train_vgg16_features


def main() -> None:
    args = model_stage_arguments(__doc__, extra=[("--features", Path, "the bottleneck features folder")])
    train_vgg16_features(load_params(args.params), features_dir=args.features, data_dir=args.data, outputs=args.outputs)


if __name__ == "__main__":
    run_stage("vgg16_features", main)
