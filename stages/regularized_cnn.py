"""Trains the regularized CNN from scratch: a fourth conv block and dropout.

Usage (as dvc.yaml runs it)::

    python stages/regularized_cnn.py --params params.yaml --data data/small \
        --model models/regularized_cnn.keras --metrics metrics/training/regularized_cnn.json --plots plots/regularized_cnn
"""

from catsdogs.cnn_stages import train_cnn
from catsdogs.config import load_params
from catsdogs.model_stage import model_stage_arguments
from catsdogs.stage_runner import run_stage


def main() -> None:
    args = model_stage_arguments(__doc__)
    train_cnn("regularized_cnn", load_params(args.params), data_dir=args.data, outputs=args.outputs)


if __name__ == "__main__":
    run_stage("regularized_cnn", main)
