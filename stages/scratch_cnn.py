"""Trains the chapter's basic CNN from scratch: three conv blocks and a dense layer.

Usage (as dvc.yaml runs it)::

    python stages/scratch_cnn.py --params params.yaml --data data/small \
        --model models/scratch_cnn.keras --metrics metrics/training/scratch_cnn.json --plots plots/scratch_cnn
"""

from catsdogs.cnn_stages import train_cnn
from catsdogs.config import load_params
from catsdogs.model_stage import model_stage_arguments
from catsdogs.stage_runner import run_stage


def main() -> None:
    args = model_stage_arguments(__doc__)
    train_cnn("scratch_cnn", load_params(args.params), data_dir=args.data, outputs=args.outputs)


if __name__ == "__main__":
    run_stage("scratch_cnn", main)
