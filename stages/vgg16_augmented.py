"""Trains a dense head on augmented photos through the frozen ImageNet VGG16.

Usage (as dvc.yaml runs it)::

    python stages/vgg16_augmented.py --params params.yaml --data data/small \
        --model models/vgg16_augmented.keras --metrics metrics/training/vgg16_augmented.json --plots plots/vgg16_augmented
"""

from catsdogs.config import load_params
from catsdogs.model_stage import model_stage_arguments
from catsdogs.stage_runner import run_stage
from catsdogs.transfer_stages import train_vgg16_augmented


def main() -> None:
    args = model_stage_arguments(__doc__)
    train_vgg16_augmented(load_params(args.params), data_dir=args.data, outputs=args.outputs)


if __name__ == "__main__":
    run_stage("vgg16_augmented", main)
