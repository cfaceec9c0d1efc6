"""Trains the regularized CNN on randomly augmented photos (zoom, rotation, shifts, shear, flips).

It starts from fresh weights, or from the trained regularized_cnn
(``augmented_cnn.initial_weights``), found in ``--models``.

Usage (as dvc.yaml runs it)::

    python stages/augmented_cnn.py --params params.yaml --data data/small --models models \
        --model models/augmented_cnn.keras --metrics metrics/training/augmented_cnn.json --plots plots/augmented_cnn
"""

from pathlib import Path

from catsdogs.cnn_stages import train_cnn
from catsdogs.config import load_params
from catsdogs.model_stage import model_stage_arguments
from catsdogs.stage_runner import run_stage


def main() -> None:
    args = model_stage_arguments(__doc__, extra=[("--models", Path, "folder of the earlier stages' .keras models")])
    train_cnn("augmented_cnn", load_params(args.params), data_dir=args.data, outputs=args.outputs, models_dir=args.models)


if __name__ == "__main__":
    run_stage("augmented_cnn", main)
