"""Trains the regularized CNN on randomly augmented photos (zoom, rotation, shifts, shear, flips).

Usage (as dvc.yaml runs it)::

    python stages/augmented_cnn.py --params params.yaml --data data/small \
        --model models/augmented_cnn.keras --metrics metrics/training/augmented_cnn.json --plots plots/augmented_cnn
"""

from catsdogs.cnn_stages import train_cnn
from catsdogs.config import load_params
from catsdogs.model_stage import model_stage_arguments
from catsdogs.stage_runner import run_stage


def main() -> None:
    args = model_stage_arguments(__doc__)
    train_cnn("augmented_cnn", load_params(args.params), data_dir=args.data, outputs=args.outputs)


if __name__ == "__main__":
    run_stage("augmented_cnn", main)
