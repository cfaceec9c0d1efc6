"""Trains a dense head on augmented photos through the frozen ImageNet VGG16.

Each epoch's validation runs the head only, on the validation photos'
bottleneck features (``--features``): the frozen base would give the same.
The head is fresh, or vgg16_features' trained head from ``--models``
(``vgg16_augmented.initial_head``).

Usage (as dvc.yaml runs it)::

    python stages/vgg16_augmented.py --params params.yaml --data data/small --features data/features --models models \
        --model models/vgg16_augmented.keras --metrics metrics/training/vgg16_augmented.json --plots plots/vgg16_augmented
"""

from pathlib import Path

from catsdogs.config import load_params
from catsdogs.model_stage import model_stage_arguments
from catsdogs.stage_runner import run_stage
from catsdogs.transfer_stages import train_vgg16_augmented


def main() -> None:
    args = model_stage_arguments(__doc__, extra=[
        ("--models", Path, "folder of the earlier stages' .keras models"),
        ("--features", Path, "the bottleneck features folder"),
    ])
    train_vgg16_augmented(
        load_params(args.params), data_dir=args.data, outputs=args.outputs, features_dir=args.features, models_dir=args.models
    )


if __name__ == "__main__":
    run_stage("vgg16_augmented", main)
